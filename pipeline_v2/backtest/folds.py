"""Walk-forward folds: boundaries, per-fold metrics, their dispersion, and pooled metrics.

`params.folds` of the builtin backtest: `{"mode": "anchored" | "rolling", "count": K,
"test_bars": N, "train_bars": M}` (all but `count` optional), or just `K` (anchored).
Over n bars the K test windows are the last K x N bars, back to back:
test k (0-based) = [n - (K - k) N, n - (K - k - 1) N). N defaults to n // (K + 1).
Its train window ends where the test starts: anchored starts at bar 0; rolling keeps M bars
(default n - K N, the first fold's train length). Each fold runs the strategy over train + test
(the train bars warm up indicators and carry any position in; a strategy with a fit step would
fit there) and measures only the test bars. Pooled metrics are those of the test windows'
returns chained together. Dispersion: `fold_sharpe_std` (ddof=1; 0 for one fold),
`worst_fold_sharpe`, `fold_sharpe_mean`, `worst_fold_return`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline_v2.backtest import metrics
from pipeline_v2.backtest.data import Bars
from pipeline_v2.backtest.engine import Run
from pipeline_v2.backtest.errors import DataError

MODES = ("anchored", "rolling")
FOLD_METRICS = ("total_return", "sharpe", "sortino", "max_drawdown", "win_rate", "trades",
                "exposure")


class FoldsError(DataError):
    """`params.folds` is malformed or does not fit the data."""


@dataclass(frozen=True)
class Fold:
    """Bar indices (end exclusive) of one fold's train and test windows."""

    index: int
    train_start: int
    train_end: int
    test_start: int
    test_end: int


@dataclass(frozen=True)
class FoldSpec:
    """A parsed `params.folds`."""

    count: int
    mode: str = "anchored"
    test_bars: int | None = None
    train_bars: int | None = None


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FoldsError(f"params.folds.{key}: expected an integer >= 1, got {value!r}")
    return value


def parse_folds(spec: Any) -> FoldSpec:
    """`params.folds` -> FoldSpec; FoldsError names the key and quotes the bad value."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return FoldSpec(_positive_int("count", spec))
    if not isinstance(spec, dict):
        raise FoldsError(f'params.folds: expected a fold count or {{"mode", "count", '
                         f'"test_bars"}}, got {spec!r}')
    unknown = sorted(set(spec) - {"mode", "count", "test_bars", "train_bars"})
    if unknown:
        raise FoldsError(f"params.folds.{unknown[0]}: unknown key (expected mode, count, "
                         f"test_bars, train_bars)")
    if "count" not in spec:
        raise FoldsError("params.folds.count: missing (the number of test folds)")
    mode = spec.get("mode", "anchored")
    if mode not in MODES:
        raise FoldsError(f'params.folds.mode: expected "anchored" or "rolling", got {mode!r}')
    return FoldSpec(
        _positive_int("count", spec["count"]), mode,
        None if spec.get("test_bars") is None else _positive_int("test_bars", spec["test_bars"]),
        None if spec.get("train_bars") is None else _positive_int("train_bars",
                                                                  spec["train_bars"]),
    )


def fold_bounds(n_bars: int, spec: FoldSpec) -> list[Fold]:
    """The folds over `n_bars` bars (see the module docstring for the exact rule)."""
    test = spec.test_bars or n_bars // (spec.count + 1)
    first_train = n_bars - spec.count * test
    if test < 2 or first_train < 1:
        raise FoldsError(f"params.folds: {spec.count} folds of {test} test bars do not fit "
                         f"{n_bars} bars (each test needs 2 bars or more and some train bars "
                         "before the first)")
    train = spec.train_bars or first_train
    folds = []
    for k in range(spec.count):
        start = n_bars - (spec.count - k) * test
        train_start = 0 if spec.mode == "anchored" else max(0, start - train)
        folds.append(Fold(k, train_start, start, start, start + test))
    return folds


def tail_run(run: Run, offset: int) -> Run:
    """The part of a run from bar `offset` on, its equity based at the close before it."""
    keep = run.trade_exits >= offset
    return Run(equity=run.equity[offset - 1:], held=run.held[offset:],
               trade_returns=run.trade_returns[keep],
               trade_entries=run.trade_entries[keep] - offset,
               trade_exits=run.trade_exits[keep] - offset, open_trade=run.open_trade)


def _chain(parts: list[Run]) -> Run:
    """Test windows' returns chained into one run (pooled metrics)."""
    returns = np.concatenate([p.equity[1:] / p.equity[:-1] for p in parts])
    equity = parts[0].equity[0] * np.concatenate(([1.0], np.cumprod(returns)))
    cat = np.concatenate
    return Run(equity=equity, held=cat([p.held for p in parts]),
               trade_returns=cat([p.trade_returns for p in parts]),
               trade_entries=cat([p.trade_entries for p in parts]),
               trade_exits=cat([p.trade_exits for p in parts]), open_trade=parts[-1].open_trade)


def walk_forward(bars: Bars, spec: FoldSpec, run_window: Callable[[Bars], Run],
                 ppy: float) -> dict[str, Any]:
    """Per-fold metrics, their dispersion and the pooled metrics; `run_window` simulates."""
    folds = fold_bounds(len(bars), spec)
    rows, parts = [], []
    for fold in folds:
        run = run_window(bars.slice(fold.train_start, fold.test_end))
        part = tail_run(run, fold.test_start - fold.train_start)
        parts.append(part)
        measured = metrics.compute(part, ppy)
        rows.append({
            "fold": fold.index, "train_start": fold.train_start, "test_start": fold.test_start,
            "test_end": fold.test_end, "from": str(bars.time[fold.test_start]),
            "to": str(bars.time[fold.test_end - 1]),
            **{k: measured[k] for k in FOLD_METRICS},
        })
    sharpes = np.array([r["sharpe"] for r in rows])
    pooled = metrics.compute(_chain(parts), ppy)
    return {
        "folds": rows,
        "fold_mode": spec.mode,
        "fold_count": len(rows),
        "fold_test_bars": folds[0].test_end - folds[0].test_start,
        "worst_fold_sharpe": float(sharpes.min()),
        "fold_sharpe_mean": float(sharpes.mean()),
        "fold_sharpe_std": float(np.std(sharpes, ddof=1)) if len(rows) > 1 else 0.0,
        "worst_fold_return": float(min(r["total_return"] for r in rows)),
        "pooled": {k: pooled[k] for k in (*FOLD_METRICS, "cagr", "calmar", "profit_factor",
                                          "expectancy")},
        "pooled_sharpe": pooled["sharpe"],
    }
