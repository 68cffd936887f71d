"""The reference backtest: OHLCV data, strategy families, a vectorised engine, metrics, stress."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline_v2.backtest import metrics
from pipeline_v2.backtest.data import Bars, DataError, load_bars
from pipeline_v2.backtest.engine import Run, simulate
from pipeline_v2.backtest.strategies import STRATEGIES, StrategyError, positions

DEFAULT_COMMISSION = 0.0005
DEFAULT_SLIPPAGE = 0.0005

__all__ = ["Bars", "DataError", "Run", "STRATEGIES", "StrategyError", "backtest", "load_bars"]


def backtest(
    bars: Bars, strategy: str, params: dict[str, Any], commission: float = DEFAULT_COMMISSION,
    slippage: float = DEFAULT_SLIPPAGE, ppy: float | None = None,
) -> tuple[dict[str, Any], Run]:
    """Metrics and the run of one strategy on these bars."""
    target = positions(bars, strategy, params)
    run = simulate(bars, target, commission, slippage)
    return metrics.compute(run, ppy or metrics.periods_per_year(bars.time)), run


def deflated_sharpe(run: Run, n_trials: int, sharpe_variance: float) -> float:
    """DSR of this run given N trials whose (annualised->per-period) Sharpe variance is known."""
    returns = run.equity[1:] / run.equity[:-1] - 1.0
    skew, kurt = metrics.moments(returns)
    return metrics.deflated_sharpe(metrics.sharpe_ratio(returns), len(returns), skew, kurt,
                                   n_trials, sharpe_variance)


def equity_points(run: Run, bars: Bars, limit: int = 400) -> list[list[Any]]:
    """A downsampled equity curve [[iso time, equity], ...] for reports."""
    step = max(1, len(run.equity) // limit)
    index = np.arange(0, len(run.equity), step)
    return [[str(bars.time[i]), round(float(run.equity[i]), 6)] for i in index]
