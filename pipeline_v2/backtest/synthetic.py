"""Seeded synthetic market data with regimes: trending, choppy and volatile stretches."""

from __future__ import annotations

import numpy as np

from pipeline_v2.backtest.data import Bars, from_arrays

# (daily drift, daily volatility, mean length in bars) per regime
REGIMES = (
    (0.0012, 0.010, 120),   # steady uptrend
    (-0.0010, 0.014, 60),   # downtrend
    (0.0000, 0.008, 80),    # sideways chop
    (0.0003, 0.025, 30),    # volatile
)


def regime_bars(n: int, seed: int, start: str = "2016-01-04", price: float = 100.0) -> Bars:
    """`n` weekday daily bars of a regime-switching random walk, the same for the same seed."""
    rng = np.random.default_rng(seed)
    drift = np.empty(n)
    vol = np.empty(n)
    i = 0
    while i < n:
        mu, sigma, mean_len = REGIMES[int(rng.integers(len(REGIMES)))]
        length = int(rng.geometric(1.0 / mean_len))
        drift[i : i + length], vol[i : i + length] = mu, sigma
        i += length
    returns = rng.normal(drift, vol)
    close = price * np.exp(np.cumsum(returns))
    gap = rng.normal(0.0, vol * 0.3)
    open_ = np.concatenate(([price], close[:-1])) * np.exp(gap)
    wick = np.abs(rng.normal(0.0, vol * 0.5, (2, n)))
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    volume = rng.integers(1_000, 100_000, n).astype(float)
    days = np.busday_offset(np.datetime64(start, "D"), np.arange(n), roll="forward")
    return from_arrays(days, open_, high, low, close, volume, "synthetic")
