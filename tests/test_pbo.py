"""PBO by CSCV: known answers, and agreement with a deliberately naive implementation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pipeline_v2.backtest.pbo import logit_histogram, pbo


def naive_cscv(returns: np.ndarray, blocks: int) -> tuple[float, list[float], list[float],
                                                            list[float]]:
    """CSCV straight from the paper, with loops: (pbo, logits, IS-best SR, its OOS SR)."""
    t, n = returns.shape
    size = t // blocks
    data = returns[t - size * blocks:]
    parts = [data[b * size:(b + 1) * size] for b in range(blocks)]

    def sharpe(column: np.ndarray) -> float:
        std = float(np.std(column, ddof=1))
        mean = float(np.mean(column))
        return 0.0 if std == 0.0 or std <= 1e-12 * abs(mean) else mean / std

    logits, is_best, oos_best = [], [], []
    for combo in itertools.combinations(range(blocks), blocks // 2):
        train = np.vstack([parts[b] for b in combo])
        test = np.vstack([parts[b] for b in range(blocks) if b not in combo])
        sr_is = [sharpe(train[:, j]) for j in range(n)]
        sr_oos = [sharpe(test[:, j]) for j in range(n)]
        best = sr_is.index(max(sr_is))
        below = sum(1 for j in range(n) if sr_oos[j] < sr_oos[best])
        equal = sum(1 for j in range(n) if j != best and sr_oos[j] == sr_oos[best])
        w = (1 + below + 0.5 * equal) / (n + 1)
        logits.append(math.log(w / (1 - w)))
        is_best.append(sr_is[best])
        oos_best.append(sr_oos[best])
    return sum(1 for x in logits if x <= 0) / len(logits), logits, is_best, oos_best


@pytest.mark.parametrize("blocks", [2, 6, 8])
def test_matches_a_naive_cscv(blocks: int) -> None:
    rng = np.random.default_rng(blocks)
    returns = rng.normal(0.0005, 0.01, size=(83, 7))  # 83: a remainder row is dropped
    returns[:, 6] = returns[:, 5]  # two identical strategies: ties share the average rank
    expected, logits, x, y = naive_cscv(returns, blocks)
    result = pbo(returns, blocks)
    assert result["pbo"] == expected
    assert result["n_combinations"] == math.comb(blocks, blocks // 2) == len(logits)
    np.testing.assert_allclose(result["logits"], logits, rtol=0, atol=1e-12)
    slope, intercept = np.polyfit(x, y, 1)
    assert result["slope"] == pytest.approx(slope, abs=1e-9)
    assert result["intercept"] == pytest.approx(intercept, abs=1e-9)
    assert result["observations"] == 83 - 83 % blocks


def test_pure_noise_is_overfit_half_the_time() -> None:
    # One noise sample may hold a lucky, persistent column; over samples PBO centres on 0.5.
    results = [pbo(np.random.default_rng(seed).normal(0.0, 0.01, size=(800, 30)))
               for seed in range(10)]
    assert all(r["n_combinations"] == 12870 for r in results)
    assert np.mean([r["pbo"] for r in results]) == pytest.approx(0.5, abs=0.08)
    # Picking noise: the in-sample winner's out-of-sample Sharpe does not follow.
    assert np.mean([r["slope"] for r in results]) < 0.25


def test_one_real_edge_among_noise_is_not_overfit() -> None:
    rng = np.random.default_rng(2)
    returns = rng.normal(0.0, 0.01, size=(1600, 30))
    returns[:, 17] += 0.003  # a per-bar Sharpe of ~0.3: it wins in and out of sample
    result = pbo(returns)
    assert result["pbo"] < 0.05
    assert result["prob_oos_loss"] == 0.0


@pytest.mark.parametrize("shape, blocks, message", [
    ((100,), 16, "expected a T x N matrix of returns, got shape (100,)"),
    ((100, 1), 16, "need at least 2 strategies (columns), got 1"),
    ((20, 3), 16, "need at least 32 rows for 16 blocks, got 20"),
    ((100, 3), 5, "blocks: expected an even number >= 2, got 5"),
])
def test_bad_input_says_what_is_wrong(shape: tuple[int, ...], blocks: int, message: str) -> None:
    with pytest.raises(ValueError) as info:
        pbo(np.zeros(shape), blocks)
    assert str(info.value) == message


def test_logit_histogram_counts_every_split() -> None:
    result = pbo(np.random.default_rng(3).normal(0, 0.01, size=(200, 5)), 8)
    hist = logit_histogram(result["logits"])
    assert sum(hist["counts"]) == result["n_combinations"]
    assert len(hist["edges"]) == len(hist["counts"]) + 1


def test_few_strategies_get_one_bin_per_rank() -> None:
    result = pbo(np.random.default_rng(4).normal(0, 0.01, size=(160, 4)), 8)
    hist = logit_histogram(result["logits"])
    assert len(hist["counts"]) == len(np.unique(result["logits"])) <= 7  # ranks, ties: halves
    assert sum(hist["counts"]) == 70
