"""Run a strategy over stress scenarios and summarise: what fraction survives, and how badly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline_v2.backtest import metrics
from pipeline_v2.backtest.data import Bars
from pipeline_v2.backtest.engine import simulate
from pipeline_v2.backtest.plugins import Strategy, decide, load_strategy
from pipeline_v2.backtest.scenarios import METHODS, generate

CATASTROPHIC_RETURN = -0.90


def _summary(sharpes: np.ndarray, returns: np.ndarray, drawdowns: np.ndarray) -> dict[str, Any]:
    return {
        "scenarios": int(len(sharpes)),
        "profitable_fraction": float((returns > 0).mean()),
        "median_sharpe": float(np.median(sharpes)),
        "sharpe_p5": float(np.percentile(sharpes, 5)),
        "sharpe_p95": float(np.percentile(sharpes, 95)),
        "median_return": float(np.median(returns)),
        "worst_drawdown": float(drawdowns.max()),
        "catastrophic": int((returns < CATASTROPHIC_RETURN).sum()),
    }


def stress_test(bars: Bars, strategy: str | Strategy, params: dict[str, Any],
                scenarios: int = 200, seed: int = 0, commission: float = 0.0,
                slippage: float = 0.0, methods: tuple[str, ...] = METHODS,
                model_dir: Path | str | None = None) -> dict[str, Any]:
    """Metrics over `scenarios` seeded paths, overall and per method (`by_method`)."""
    if isinstance(strategy, str):
        strategy = load_strategy(strategy, params, model_dir)
    decide(strategy, bars)  # fail early on bad params, too few bars or bad positions
    ppy = metrics.periods_per_year(bars.time)
    rows: dict[str, list[tuple[float, float, float]]] = {m: [] for m in methods}
    for method, make in generate(bars, scenarios, seed, methods):
        path = make()
        run = simulate(path, decide(strategy, path), commission, slippage)
        equity = run.equity
        returns = equity[1:] / equity[:-1] - 1.0
        rows[method].append((metrics.sharpe_ratio(returns, ppy), float(equity[-1] / equity[0] - 1),
                             metrics.max_drawdown(equity)))
    every = np.array([r for m in methods for r in rows[m]])
    result = _summary(every[:, 0], every[:, 1], every[:, 2])
    counts, edges = np.histogram(every[:, 0], bins=min(20, max(1, len(every))))
    result["sharpe_histogram"] = {"edges": [round(float(e), 6) for e in edges],
                                  "counts": [int(c) for c in counts]}
    result["by_method"] = {
        m: _summary(*np.array(rows[m]).T) for m in methods if rows[m]
    }
    return result
