"""CGE-style stress scenarios built from a trial's own data, seeded and reproducible bit for bit.

Every bar is described by its relative shape — gap (open / previous close), body (close / open),
upper and lower wicks — so a scenario is a new sequence of shapes chained from the first close:

- `bootstrap`: stationary block bootstrap (Politis & Romano), mean block length 20 bars.
- `regime`: a two-state Markov chain (calm / volatile, split at the median rolling volatility)
  with each state's persistence estimated from the data; bars drawn from the state's pool.
- `volatility`: the original bars with demeaned log returns scaled by k in [0.5, 2.5].
- `crash`: the original bars with a gap down of 10-40 % at a random bar and doubled volatility
  for the 20 bars after it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline_v2.backtest.data import Bars

METHODS = ("bootstrap", "regime", "volatility", "crash")
BLOCK = 20
VOL_WINDOW = 20


class Shapes:
    """Log-space shapes of bars 1..n-1 of the source."""

    def __init__(self, bars: Bars) -> None:
        o, h, lo, c = (np.log(a) for a in (bars.open, bars.high, bars.low, bars.close))
        self.gap = o[1:] - c[:-1]
        self.body = c[1:] - o[1:]
        self.upper = h[1:] - np.maximum(o[1:], c[1:])
        self.lower = lo[1:] - np.minimum(o[1:], c[1:])
        self.first = bars.slice(0, 1)
        self.time = bars.time
        self.volume = bars.volume

    def __len__(self) -> int:
        return len(self.gap)

    def build(self, index: np.ndarray, scale: np.ndarray | float = 1.0,
              shock: np.ndarray | float = 0.0) -> Bars:
        """Chain the shapes at `index` from the first close, scaling demeaned moves."""
        gap, body = self.gap[index], self.body[index]
        gap = gap.mean() + scale * (gap - gap.mean()) + shock
        body = body.mean() + scale * (body - body.mean())
        log_close = np.log(self.first.close[0]) + np.cumsum(gap + body)
        log_open = log_close - body
        top = np.maximum(log_open, log_close) + self.upper[index] * scale
        bottom = np.minimum(log_open, log_close) + self.lower[index] * scale
        stack = lambda first, rest: np.concatenate((first, np.exp(rest)))  # noqa: E731
        return Bars(self.time, stack(self.first.open, log_open), stack(self.first.high, top),
                    stack(self.first.low, bottom), stack(self.first.close, log_close),
                    self.volume, "scenario")


def block_bootstrap(rng: np.random.Generator, m: int, n: int, block: int = BLOCK) -> np.ndarray:
    """n indices into m items: runs of consecutive indices, each run ending with prob 1/block."""
    restart = rng.random(n) < 1.0 / block
    restart[0] = True
    starts = rng.integers(0, m, n)
    run_start = np.maximum.accumulate(np.where(restart, np.arange(n), 0))
    return (starts[run_start] + np.arange(n) - run_start) % m


def regimes(shapes: Shapes) -> np.ndarray:
    """0 = calm, 1 = volatile, per source bar, from rolling volatility vs its median."""
    moves = shapes.gap + shapes.body
    window = min(VOL_WINDOW, max(2, len(moves) // 4))
    padded = np.concatenate((np.full(window - 1, moves[:window].mean()), moves))
    vol = np.lib.stride_tricks.sliding_window_view(padded, window).std(axis=1)
    return (vol > np.median(vol)).astype(np.int64)


def regime_switching(rng: np.random.Generator, shapes: Shapes, n: int) -> np.ndarray:
    """Indices following a two-state Markov chain fitted to the data's own regimes."""
    state = regimes(shapes)
    pools = [np.flatnonzero(state == s) for s in (0, 1)]
    if not len(pools[0]) or not len(pools[1]):
        return rng.integers(0, len(shapes), n)
    stays = [float(np.mean(state[1:][state[:-1] == s] == s)) for s in (0, 1)]
    durations, current, total = [], int(rng.integers(0, 2)), 0
    while total < n:  # one draw per regime spell, not per bar
        length = int(rng.geometric(max(1e-6, 1.0 - min(stays[current], 0.999))))
        durations.append((current, length))
        total += length
        current = 1 - current
    labels = np.concatenate([np.full(length, s) for s, length in durations])[:n]
    index = np.empty(n, dtype=np.int64)
    for s in (0, 1):
        where = labels == s
        index[where] = rng.choice(pools[s], int(where.sum()))
    return index


def scenario_bars(bars: Bars, method: str, rng: np.random.Generator) -> Bars:
    """One synthetic price path by `method`."""
    shapes = Shapes(bars)
    n = len(shapes)
    identity = np.arange(n)
    if method == "bootstrap":
        return shapes.build(block_bootstrap(rng, n, n))
    if method == "regime":
        return shapes.build(regime_switching(rng, shapes, n))
    if method == "volatility":
        return shapes.build(identity, scale=float(rng.uniform(0.5, 2.5)))
    if method == "crash":
        at = int(rng.integers(n // 10, max(n // 10 + 1, n - n // 10)))
        shock = np.zeros(n)
        shock[at] = np.log(1.0 - rng.uniform(0.10, 0.40))
        scale = np.ones(n)
        scale[at + 1 : at + 21] = 2.0
        return shapes.build(identity, scale=scale, shock=shock)
    raise ValueError(f"unknown scenario method {method!r} (expected one of {', '.join(METHODS)})")


def generate(bars: Bars, count: int, seed: int,
             methods: tuple[str, ...] = METHODS) -> list[tuple[str, Callable[[], Bars]]]:
    """`count` scenarios split evenly across methods, each with its own child generator."""
    children = np.random.SeedSequence(seed).spawn(count)
    plan = [methods[i % len(methods)] for i in range(count)]
    return [
        (method, lambda m=method, c=child: scenario_bars(bars, m, np.random.default_rng(c)))
        for method, child in zip(plan, children, strict=True)
    ]
