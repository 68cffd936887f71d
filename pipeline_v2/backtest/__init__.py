"""The reference backtest: OHLCV data, strategy families, a vectorised engine, metrics, stress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline_v2.backtest import metrics
from pipeline_v2.backtest.data import Bars, load_bars
from pipeline_v2.backtest.engine import Run, simulate
from pipeline_v2.backtest.errors import DataError, EngineError, StrategyError
from pipeline_v2.backtest.lookahead import LookAheadError, check_lookahead
from pipeline_v2.backtest.plugins import Strategy, decide, load_strategy
from pipeline_v2.backtest.strategies import STRATEGIES

DEFAULT_COMMISSION = 0.0005
DEFAULT_SLIPPAGE = 0.0005

__all__ = ["Bars", "DataError", "EngineError", "LookAheadError", "Run", "STRATEGIES",
           "Strategy", "StrategyError", "backtest", "load_bars", "load_strategy"]


def backtest(
    bars: Bars, strategy: str | Strategy, params: dict[str, Any],
    commission: float = DEFAULT_COMMISSION, slippage: float = DEFAULT_SLIPPAGE,
    ppy: float | None = None, trade_from: int = 0, model_dir: Path | str | None = None,
    lookahead: bool = False,
) -> tuple[dict[str, Any], Run]:
    """Metrics and the run of one strategy (a name, or a loaded Strategy) on bars[trade_from:];
    the bars before only warm up its indicators (`Bars.window_with_history` gives both).

    With `lookahead`, LookAheadError if a position depends on later bars (see lookahead.py).
    """
    if isinstance(strategy, str):
        strategy = load_strategy(strategy, params, model_dir)
    target = decide(strategy, bars, trade_from)
    if lookahead:
        check_lookahead(strategy, bars, target)
    traded = bars.slice(trade_from, len(bars))
    run = simulate(traded, target[trade_from:], commission, slippage)
    return metrics.compute(run, ppy or metrics.periods_per_year(traded.time)), run


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
