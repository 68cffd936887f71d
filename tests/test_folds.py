"""Walk-forward folds: exact boundaries, per-fold metrics against direct runs, bad specs."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline_v2.backtest import backtest, metrics
from pipeline_v2.backtest.data import from_arrays
from pipeline_v2.backtest.folds import (
    Fold,
    FoldsError,
    FoldSpec,
    fold_bounds,
    parse_folds,
    walk_forward,
)


def bars(n: int = 400, seed: int = 4):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0.0003, 0.012, n)))
    open_ = close * np.exp(rng.normal(0, 0.003, n))
    time = np.busday_offset(np.datetime64("2021-01-04", "D"), np.arange(n), roll="forward")
    return from_arrays(time.astype("datetime64[s]"), open_, np.maximum(open_, close) * 1.004,
                       np.minimum(open_, close) * 0.996, close)


def test_anchored_boundaries() -> None:
    assert fold_bounds(100, FoldSpec(4, "anchored", 15)) == [
        Fold(0, 0, 40, 40, 55), Fold(1, 0, 55, 55, 70), Fold(2, 0, 70, 70, 85),
        Fold(3, 0, 85, 85, 100)]


def test_rolling_boundaries_keep_the_first_train_length() -> None:
    assert fold_bounds(100, FoldSpec(4, "rolling", 15)) == [
        Fold(0, 0, 40, 40, 55), Fold(1, 15, 55, 55, 70), Fold(2, 30, 70, 70, 85),
        Fold(3, 45, 85, 85, 100)]
    assert fold_bounds(100, FoldSpec(2, "rolling", 30, train_bars=10)) == [
        Fold(0, 30, 40, 40, 70), Fold(1, 60, 70, 70, 100)]


def test_default_test_length_and_the_short_form() -> None:
    spec = parse_folds(4)
    assert spec == FoldSpec(4, "anchored")
    assert fold_bounds(101, spec) == [
        Fold(0, 0, 21, 21, 41), Fold(1, 0, 41, 41, 61), Fold(2, 0, 61, 61, 81),
        Fold(3, 0, 81, 81, 101)]


@pytest.mark.parametrize("spec, message", [
    ("3", "params.folds: expected a fold count or {\"mode\", \"count\", \"test_bars\"}, "
          "got '3'"),
    ({"count": 0}, "params.folds.count: expected an integer >= 1, got 0"),
    ({"mode": "anchored"}, "params.folds.count: missing (the number of test folds)"),
    ({"count": 2, "mode": "expanding"},
     "params.folds.mode: expected \"anchored\" or \"rolling\", got 'expanding'"),
    ({"count": 2, "tests": 5},
     "params.folds.tests: unknown key (expected mode, count, test_bars, train_bars)"),
])
def test_bad_specs_name_the_key(spec: object, message: str) -> None:
    with pytest.raises(FoldsError) as info:
        parse_folds(spec)
    assert str(info.value) == message


def test_folds_that_do_not_fit_the_data() -> None:
    with pytest.raises(FoldsError) as info:
        fold_bounds(100, FoldSpec(5, "anchored", 20))
    assert str(info.value) == ("params.folds: 5 folds of 20 test bars do not fit 100 bars (each "
                               "test needs 2 bars or more and some train bars before the first)")


@pytest.mark.parametrize("mode", ["anchored", "rolling"])
def test_fold_metrics_match_direct_runs(mode: str) -> None:
    data = bars()
    params = {"fast": 5, "slow": 20}
    ppy = metrics.periods_per_year(data.time)
    spec = FoldSpec(3, mode, 60)
    result = walk_forward(data, spec, lambda w: backtest(w, "sma_cross", params, 0.0, 0.0, ppy)[1],
                          ppy)
    assert [(r["test_start"], r["test_end"]) for r in result["folds"]] == [
        (220, 280), (280, 340), (340, 400)]
    growth = 1.0
    for row, fold in zip(result["folds"], fold_bounds(len(data), spec), strict=True):
        _, run = backtest(data.slice(fold.train_start, fold.test_end), "sma_cross", params,
                          0.0, 0.0, ppy)
        equity = run.equity[fold.test_start - fold.train_start - 1:]
        assert row["total_return"] == pytest.approx(equity[-1] / equity[0] - 1, abs=1e-12)
        returns = equity[1:] / equity[:-1] - 1
        assert row["sharpe"] == pytest.approx(metrics.sharpe_ratio(returns, ppy), abs=1e-12)
        assert row["from"] == str(data.time[fold.test_start])
        growth *= 1 + row["total_return"]
    sharpes = [r["sharpe"] for r in result["folds"]]
    assert result["worst_fold_sharpe"] == min(sharpes)
    assert result["fold_sharpe_std"] == pytest.approx(np.std(sharpes, ddof=1), abs=1e-12)
    assert result["pooled"]["total_return"] == pytest.approx(growth - 1, abs=1e-12)
    assert result["fold_count"] == 3 and result["fold_test_bars"] == 60
