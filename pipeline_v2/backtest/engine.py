"""The backtest engine: target positions decided at a bar's close fill at the next open.

Conventions (fixed): a target position w in [-1, 1] is a fraction of equity; +1 / -1 is all-in
long / short. When the target changes, the account trades at the next open to hold
`w * V / (fill * (1 + commission))` units, where V is its liquidation value there (cash plus the
position sold at that open, net of slippage and commission) — so a move to or from flat, or a
flip, closes the old position and opens the new one with the whole of V, as before fractional
sizing existed; a move within one side (0.5 -> 1) trades only the difference. Units are then
held (not rebalanced) until the target changes again. `slippage` moves every fill against the
trade (`open * (1 ± slippage)`); `commission` is a fraction of each fill's traded notional.
A rebalance that slippage would turn the other way is skipped. Equity is cash plus units marked
at every close. A trade runs from leaving flat (or a flip) to returning to flat (or the next
flip); its return is the change of equity over it, partial rebalances included. A position
still open on the last bar stays open (its unrealised P&L is in the equity, it is not counted
as a closed trade). An account whose liquidation value reaches 0 trades no more.
"""

from __future__ import annotations

import math
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


def liquidation_value(cash: float, units: float, price: float, commission: float,
                      slippage: float) -> float:
    """Cash plus the position sold (or bought back) at `price`, net of slippage and commission."""
    if units == 0.0:
        return cash
    fill = price * (1.0 - slippage * math.copysign(1.0, units))
    return cash + units * fill - commission * abs(units) * fill


def rebalance(cash: float, units: float, weight: float, price: float, commission: float,
              slippage: float) -> tuple[float, float, float]:
    """(cash, units, fill price) after moving to `weight` of equity at `price`; fill 0 = none."""
    value = liquidation_value(cash, units, price, commission, slippage)
    if value <= 0.0:  # ruined: nothing left to size a position with
        return value, 0.0, 0.0
    target = weight * value / (price * (1.0 + commission))
    direction = math.copysign(1.0, target - units)
    if target == units:
        return cash, units, 0.0
    fill = price * (1.0 + slippage * direction)
    target = weight * value / (fill * (1.0 + commission))
    if same_side(units, target) and (target - units) * direction <= 0.0:
        return cash, units, 0.0  # within the slippage band: not worth a trade
    traded = target - units
    cash -= traded * fill + commission * abs(traded) * fill
    if target == 0.0 or not same_side(units, target):
        cash = value - target * fill - commission * abs(target) * fill  # close, then open
    return cash, target, fill


def same_side(a: float, b: float) -> bool:
    """Both long or both short (flat is neither)."""
    return a * b > 0.0


def simulate(bars: Bars, target: np.ndarray, commission: float = 0.0, slippage: float = 0.0,
             cash: float = 10_000.0) -> Run:
    """Run target positions (in [-1, 1] per bar, decided at its close) through the market."""
    if np.isin(target, (-1.0, 0.0, 1.0)).all():
        return simulate_all_in(bars, target, commission, slippage, cash)
    return simulate_fractional(bars, target, commission, slippage, cash)


def simulate_fractional(bars: Bars, target: np.ndarray, commission: float = 0.0,
                        slippage: float = 0.0, cash: float = 10_000.0) -> Run:
    """Any targets in [-1, 1]: one rebalance per change of target (a loop over changes only)."""
    n = len(bars)
    held = np.empty(n)
    held[0] = 0.0
    held[1:] = target[:-1]
    change = np.flatnonzero(held[1:] != held[:-1]) + 1
    seg_cash = np.empty(len(change) + 1)
    seg_units = np.zeros(len(change) + 1)
    seg_cash[0] = cash
    money, units = cash, 0.0
    returns, entries, exits = [], [], []
    entry_value, entry_bar = cash, -1
    opens = bars.open
    for k, i in enumerate(change.tolist(), start=1):
        price = float(opens[i])
        weight = float(held[i])
        value = liquidation_value(money, units, price, commission, slippage)
        before = units
        money, units, _ = rebalance(money, units, weight, price, commission, slippage)
        if before != 0.0 and not same_side(before, units):  # a trade ends: flat or flipped
            returns.append(value / entry_value - 1.0)
            entries.append(entry_bar)
            exits.append(i)
        if units != 0.0 and not same_side(before, units):  # a trade begins
            entry_value, entry_bar = value, i
        seg_cash[k], seg_units[k] = money, units
    segment = np.zeros(n, dtype=np.int64)
    segment[change] = 1
    segment = np.cumsum(segment)
    equity = seg_cash[segment] + seg_units[segment] * bars.close
    return Run(
        equity=equity,
        held=held,
        trade_returns=np.array(returns),
        trade_entries=np.array(entries, dtype=np.int64),
        trade_exits=np.array(exits, dtype=np.int64),
        open_trade=bool(units != 0.0),
    )


def simulate_all_in(bars: Bars, target: np.ndarray, commission: float = 0.0,
                    slippage: float = 0.0, cash: float = 10_000.0) -> Run:
    """The same conventions for +1/0/-1 targets only, vectorised over segments (no loop): fast
    for long series with many trades."""
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
