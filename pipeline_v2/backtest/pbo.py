"""Probability of Backtest Overfitting by combinatorially symmetric cross-validation (CSCV).

Bailey, Borwein, Lopez de Prado and Zhu, "The Probability of Backtest Overfitting" (2015).
Pure numpy; no pipeline imports.

Given a T x N matrix of per-bar returns (N strategies, e.g. the trials of one search, on common
timestamps): drop the first T mod S rows, cut the rest into S equal blocks of consecutive bars;
for every way of choosing S/2 blocks as the in-sample half (the other half is out of sample):
- pick the strategy with the best in-sample Sharpe ratio (mean / std, ddof=1; the first one on
  ties; 0 when std is 0),
- find its relative rank w = rank / (N + 1) among the N out-of-sample Sharpe ratios (rank 1 =
  worst; ties share the average rank), and its logit = ln(w / (1 - w)).
PBO is the fraction of splits whose logit is <= 0: how often the in-sample winner ends up at
or below the out-of-sample median. The degradation line is the least-squares fit of the
winner's out-of-sample Sharpe on its in-sample Sharpe across splits (slope < 0 or a large
drop: the search selects noise). `prob_oos_loss` is the fraction of splits where the winner
loses money out of sample.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

DEFAULT_BLOCKS = 16
_CHUNK = 2048  # splits evaluated at once: bounds memory at ~CHUNK x N floats per array


def split_masks(blocks: int) -> np.ndarray:
    """Every in-sample choice of blocks/2 of `blocks` blocks, as booleans, itertools order."""
    combos = list(itertools.combinations(range(blocks), blocks // 2))
    masks = np.zeros((len(combos), blocks), dtype=bool)
    for row, combo in enumerate(combos):
        masks[row, list(combo)] = True
    return masks


def _sharpe(total: np.ndarray, total_sq: np.ndarray, n: int) -> np.ndarray:
    """Per-period Sharpe from sums over n observations; 0 where the deviation is (nearly) 0."""
    mean = total / n
    std = np.sqrt(np.maximum(total_sq - n * mean * mean, 0.0) / (n - 1))
    # A constant series leaves rounding noise in the variance: treat it as no deviation.
    flat = std <= 1e-12 * np.abs(mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flat | (std == 0), 0.0, mean / std)


def pbo(returns: np.ndarray, blocks: int = DEFAULT_BLOCKS) -> dict[str, Any]:
    """PBO, the logits, the degradation line and the number of splits of a T x N matrix."""
    matrix = np.asarray(returns, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"expected a T x N matrix of returns, got shape {matrix.shape}")
    if blocks < 2 or blocks % 2:
        raise ValueError(f"blocks: expected an even number >= 2, got {blocks}")
    t, n = matrix.shape
    if n < 2:
        raise ValueError(f"need at least 2 strategies (columns), got {n}")
    size = t // blocks
    if size < 2:
        raise ValueError(f"need at least {2 * blocks} rows for {blocks} blocks, got {t}")
    if not np.isfinite(matrix).all():
        raise ValueError("returns contain NaN or infinite values")
    body = matrix[t - size * blocks:].reshape(blocks, size, n)
    sums, sums_sq = body.sum(axis=1), (body * body).sum(axis=1)  # blocks x N
    total, total_sq = sums.sum(axis=0), sums_sq.sum(axis=0)
    half = size * blocks // 2
    masks = split_masks(blocks)
    logits, is_best, oos_best = [], [], []
    for lo in range(0, len(masks), _CHUNK):
        m = masks[lo:lo + _CHUNK].astype(np.float64)
        is_sum, is_sq = m @ sums, m @ sums_sq
        sr_is = _sharpe(is_sum, is_sq, half)
        sr_oos = _sharpe(total - is_sum, total_sq - is_sq, half)
        best = np.argmax(sr_is, axis=1)
        rows = np.arange(len(m))
        chosen = sr_oos[rows, best][:, None]
        below = (sr_oos < chosen).sum(axis=1)
        ties = (sr_oos == chosen).sum(axis=1) - 1  # others equal to the winner
        rank = 1.0 + below + 0.5 * ties
        w = rank / (n + 1.0)
        logits.append(np.log(w / (1.0 - w)))
        is_best.append(sr_is[rows, best])
        oos_best.append(sr_oos[rows, best])
    logit = np.concatenate(logits)
    x, y = np.concatenate(is_best), np.concatenate(oos_best)
    if np.ptp(x) > 0:
        slope, intercept = (float(v) for v in np.polyfit(x, y, 1))
    else:
        slope, intercept = 0.0, float(y.mean())
    return {
        "pbo": float((logit <= 0).mean()),
        "logits": logit,
        "slope": slope,
        "intercept": intercept,
        "prob_oos_loss": float((y < 0).mean()),
        "n_combinations": int(len(masks)),
        "blocks": blocks,
        "strategies": int(n),
        "observations": int(size * blocks),
    }


def logit_histogram(logits: np.ndarray, bins: int = 20) -> dict[str, list[float]]:
    """A compact histogram of the logits for reports: bin edges and counts.

    With few strategies the logits take few distinct values: then each value gets its own bin
    (edges halfway between neighbours), so no bin straddles two ranks.
    """
    finite = np.sort(logits[np.isfinite(logits)])
    if not len(finite):
        return {"edges": [], "counts": []}
    distinct = np.unique(finite)
    if len(distinct) <= bins:
        gap = float(np.diff(distinct).min()) if len(distinct) > 1 else 1.0
        inner = (distinct[1:] + distinct[:-1]) / 2
        edges = np.concatenate(([distinct[0] - gap / 2], inner, [distinct[-1] + gap / 2]))
        counts = np.array([(finite == v).sum() for v in distinct])
    else:
        bound = max(1.0, math.ceil(float(np.abs(finite).max())))
        counts, edges = np.histogram(finite, bins=bins, range=(-bound, bound))
    return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]}
