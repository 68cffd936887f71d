"""The vectorised backtest: target positions decided at a bar's close fill at the next open.

Conventions (fixed): fractional all-in sizing — on entry the whole equity buys (or sells short)
`equity / (fill * (1 + commission))` units; `slippage` moves every fill against the trade
(`open * (1 ± slippage)`); `commission` is a fraction of each fill's notional, paid on entry and
on exit. Equity is marked to market at every close. A position still open on the last bar stays
open (its unrealised P&L is in the equity, it is not counted as a closed trade).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline_v2.backtest.data import Bars


@dataclass(frozen=True)
class Run:
    """Equity at every close, the position held during every bar, and the closed trades."""

    equity: np.ndarray
    held: np.ndarray
    trade_returns: np.ndarray
    trade_entries: np.ndarray
    trade_exits: np.ndarray
    open_trade: bool


def simulate(bars: Bars, target: np.ndarray, commission: float = 0.0, slippage: float = 0.0,
             cash: float = 10_000.0) -> Run:
    """Run target positions (+1/0/-1 per bar, decided at its close) through the market."""
    n = len(bars)
    held = np.empty(n)
    held[0] = 0.0
    held[1:] = target[:-1]
    change = np.empty(n, dtype=bool)
    change[0] = True
    change[1:] = held[1:] != held[:-1]
    starts = np.flatnonzero(change)  # segment k runs from starts[k] to starts[k+1] - 1
    segment = np.cumsum(change) - 1
    side = held[starts]
    fill = bars.open[starts] * (1.0 + slippage * side)
    cost = 1.0 + commission

    # Exit of segment k happens at the open that starts segment k + 1.
    exits = bars.open[starts[1:]] * (1.0 - slippage * side[:-1])
    f = fill[:-1]
    exit_ratio = np.where(
        side[:-1] == 0.0, 1.0,
        (f + side[:-1] * (exits - f) - commission * exits) / (f * cost),
    )
    entry_equity = cash * np.concatenate(([1.0], np.cumprod(exit_ratio)))

    seg_fill, seg_side = fill[segment], side[segment]
    marked = np.where(seg_side == 0.0, 1.0,
                      (seg_fill + seg_side * (bars.close - seg_fill)) / (seg_fill * cost))
    equity = entry_equity[segment] * marked

    traded = side[:-1] != 0.0
    return Run(
        equity=equity,
        held=held,
        trade_returns=exit_ratio[traded] - 1.0,
        trade_entries=starts[:-1][traded],
        trade_exits=starts[1:][traded],
        open_trade=bool(side[-1] != 0.0),
    )
