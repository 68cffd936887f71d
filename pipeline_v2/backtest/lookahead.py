"""The look-ahead guard: a position decided at bar t's close may not depend on bars after t.

The backtest reruns the strategy on the data cut after a few sampled bars t and compares the
positions up to t with those from the whole data. Any difference means the strategy read the
future (a shifted series, a full-sample mean or scale, ...) and its backtest cannot be trusted.
"""

from __future__ import annotations

import numpy as np

from pipeline_v2.backtest.data import Bars
from pipeline_v2.backtest.errors import StrategyError
from pipeline_v2.backtest.plugins import Strategy, checked, label, view_of

SAMPLES = 4
TOLERANCE = 1e-9


class LookAheadError(StrategyError):
    """A strategy whose position at some bar changes when later bars change."""


def sample_cuts(n: int, samples: int = SAMPLES) -> list[int]:
    """Bar indices t to cut after: spread over the second half (past any warm-up), never last."""
    if n < 3:
        return []
    cuts = np.linspace(n // 2, n - 2, samples).round().astype(int)
    return sorted({int(t) for t in cuts})


def check_lookahead(strategy: Strategy, bars: Bars, full: np.ndarray,
                    samples: int = SAMPLES) -> None:
    """Raise LookAheadError naming the first bar whose position depends on later bars."""
    for t in sample_cuts(len(bars), samples):
        cut = checked(strategy, strategy.positions(view_of(bars, t + 1)), bars.time[: t + 1])
        differ = np.flatnonzero(~np.isclose(cut, full[: t + 1], rtol=0.0, atol=TOLERANCE))
        if differ.size:
            i = int(differ[0])
            raise LookAheadError(
                f"{label(strategy)}: look-ahead: the position at bar {i} ({bars.time[i]}) is "
                f"{full[i]:g} with all {len(bars)} bars but {cut[i]:g} with the bars up to "
                f"bar {t} ({bars.time[t]}); a position decided at a bar's close may use only "
                "bars up to that close"
            )
