"""The engine's own errors. It imports nothing of the pipeline; the CLI maps them to exit 2."""

from __future__ import annotations


class EngineError(Exception):
    """Input the backtest engine cannot work with."""


class DataError(EngineError):
    """Market data that cannot be backtested: missing columns, bad prices, bad timestamps."""


class StrategyError(EngineError):
    """An unknown strategy, an unknown or invalid parameter."""
