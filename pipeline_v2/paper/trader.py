"""The reference paper trader: a feed, the trial's strategy, a simulated broker, persisted state.

Each tick is one bar. The strategy (a builtin or a plug-in, backtest/plugins.py) decides the
target position in [-1, 1] at the bar's close through its incremental `step`, and the order fills
at the next bar's open (slippage against the trade, commission on notional), sized exactly as
the backtest engine sizes it (fractional targets rebalance; see backtest/engine.py). A stop-loss
triggered by the bar's price range takes priority: the position exits at the stop (or the open,
if the bar gapped through it) and the strategy may not re-enter until its target changes.
Positions are capped at `max_position` x equity. Everything — cash, units, the pending order,
statistics — is written atomically to `run_dir/state.json` after every tick, so a restart
resumes the same position; a strategy with its own `step` (it may keep state) is replayed over
the bars already seen, without trading, to rebuild that state.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tenacity import RetryError, retry, stop_after_attempt, wait_fixed

from pipeline_v2.backtest.data import Bars
from pipeline_v2.backtest.engine import rebalance, same_side
from pipeline_v2.backtest.metrics import periods_per_year
from pipeline_v2.backtest.plugins import (
    HISTORY_LIMIT,
    Strategy,
    decide_step,
    has_own_step,
    load_strategy,
)

EXIT_BROKER_DOWN = 3
STATE_FILE, METRICS_FILE, HEARTBEAT_FILE = "state.json", "metrics.json", "heartbeat"
FILLS_FILE = "fills.jsonl"
EQUITY_FILE = "equity.jsonl"  # [bar time, equity] per tick, for reports' equity curves


class BrokerError(Exception):
    """The (simulated) broker rejected or lost a call."""


class Broker:
    """Fills market orders at a given price; fails a `fault_rate` fraction of calls."""

    def __init__(self, commission: float, slippage: float, fault_rate: float, seed: int) -> None:
        self.commission, self.slippage, self.fault_rate = commission, slippage, fault_rate
        self.rng = random.Random(seed)

    def fill(self, units: float, price: float) -> tuple[float, float]:
        """Buy (units > 0) or sell at `price` moved by slippage; returns (fill price, fee)."""
        if self.rng.random() < self.fault_rate:
            raise BrokerError("broker call failed (injected fault)")
        fill = price * (1 + math.copysign(self.slippage, units))
        return fill, abs(units) * fill * self.commission


@dataclass
class State:
    """Everything a restart needs to resume the same position."""

    cursor: int = 0
    cash: float = 10_000.0
    units: float = 0.0
    entry: float = 0.0
    pending: float | None = None  # target position in [-1, 1] to fill at the next open
    blocked_side: float = 0.0  # the target stopped out: no re-entry until the target changes
    held: float = 0.0  # the target position the account holds now
    last_equity: float | None = None
    initial: float = 10_000.0
    peak: float = 10_000.0
    max_drawdown: float = 0.0
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    trades: int = 0
    fills: int = 0
    finished: bool = False

    def side(self) -> float:
        """+1 long, -1 short, 0 flat."""
        return 0.0 if self.units == 0 else math.copysign(1.0, self.units)


def atomic_write(path: Path, text: str) -> None:
    """Write-then-rename, so a reader (or a restart) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Trader:
    """One strategy paper-trading one feed, persisting to `run_dir`."""

    def __init__(self, run_dir: Path, bars: Bars, strategy: str | Strategy,
                 params: dict[str, Any], broker: Broker, stop_loss: float = 0.05,
                 max_position: float = 1.0, cash: float = 10_000.0,
                 sleep: Callable[[float], None] = time.sleep, speed: float = 0.0,
                 model_dir: Path | None = None) -> None:
        self.run_dir = run_dir
        self.bars = bars
        self.strategy = (load_strategy(strategy, params, model_dir)
                         if isinstance(strategy, str) else strategy)
        self.broker = broker
        self.stop_loss, self.max_position = stop_loss, max_position
        self.sleep, self.speed = sleep, speed
        self.ppy = periods_per_year(bars.time)
        self.stopping = False
        self.state = self._load(cash)
        if has_own_step(self.strategy):  # rebuild the strategy's own state, trading nothing
            for i in range(min(self.state.cursor, len(bars))):
                decide_step(self.strategy, bars, i, HISTORY_LIMIT)

    def _load(self, cash: float) -> State:
        path = self.run_dir / STATE_FILE
        if path.exists():
            data = json.loads(path.read_text())
            data.setdefault("held", 0.0 if not data.get("units") else
                            math.copysign(1.0, data["units"]))  # a state from before fractions
            return State(**data)
        return State(cash=cash, initial=cash, peak=cash)

    # -- one tick ---------------------------------------------------------------------------------

    def equity(self, price: float) -> float:
        """Cash plus the position marked at `price`."""
        return self.state.cash + self.state.units * price

    def _trade_to(self, weight: float, price: float, reason: str) -> None:
        """Move the position to `weight` of equity at `price` through the broker (retried)."""
        s = self.state
        if weight == s.held:
            return
        if s.units and not same_side(s.units, weight):  # to flat, or a flip: close first
            fill, fee = self._broker_fill(-s.units, price)
            s.cash += s.units * fill - fee
            self._record(-s.units, fill, fee, reason)
            s.units, s.trades, s.held = 0.0, s.trades + 1, 0.0
        if weight:
            _, units, fill_guess = rebalance(s.cash, s.units, weight * self.max_position, price,
                                             self.broker.commission, self.broker.slippage)
            if fill_guess and units != s.units:  # else within the slippage band, or ruined
                traded = units - s.units
                fill, fee = self._broker_fill(traded, price)
                s.cash -= traded * fill + fee
                if abs(units) > abs(s.units):  # adding: the stop follows the average entry
                    s.entry = (s.entry * abs(s.units) + fill * abs(traded)) / abs(units)
                s.units = units
                self._record(traded, fill, fee, reason)
        s.held = weight  # only once the broker has filled it

    @retry(stop=stop_after_attempt(4), wait=wait_fixed(0.01), reraise=False)
    def _broker_fill(self, units: float, price: float) -> tuple[float, float]:
        return self.broker.fill(units, price)

    def _record(self, units: float, fill: float, fee: float, reason: str) -> None:
        self.state.fills += 1
        line = {"bar": self.state.cursor, "time": str(self.bars.time[self.state.cursor]),
                "units": units, "price": fill, "fee": fee, "reason": reason}
        with (self.run_dir / FILLS_FILE).open("a") as fh:
            fh.write(json.dumps(line) + "\n")

    def tick(self) -> None:
        """Process bar `cursor`: fill the pending order, stop-loss, mark, decide."""
        s, b, i = self.state, self.bars, self.state.cursor
        if s.pending is not None:
            self._trade_to(s.pending, b.open[i], "signal")
            s.pending = None
        stopped = False
        if s.units and self.stop_loss > 0:
            side = s.side()
            stop = s.entry * (1 - side * self.stop_loss)
            if (side > 0 and b.low[i] <= stop) or (side < 0 and b.high[i] >= stop):
                price = min(b.open[i], stop) if side > 0 else max(b.open[i], stop)
                s.blocked_side, stopped = s.held, True
                self._trade_to(0.0, price, "stop_loss")
        equity = self.equity(b.close[i])
        if s.last_equity:
            r = equity / s.last_equity - 1
            s.n, s.total, s.total_sq = s.n + 1, s.total + r, s.total_sq + r * r
        s.last_equity = equity
        s.peak = max(s.peak, equity)
        s.max_drawdown = max(s.max_drawdown, 1 - equity / s.peak)
        target = decide_step(self.strategy, b, i, HISTORY_LIMIT)  # every bar: it may keep state
        if not stopped:
            if s.blocked_side and target == s.blocked_side:
                pass  # stopped out of this target: wait for it to change first
            else:
                s.blocked_side = 0.0
                if target != s.held:
                    s.pending = target
        s.cursor = i + 1

    # -- persistence --------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """What metrics.json holds (the paper-trader contract plus a few extras)."""
        s = self.state
        equity = s.last_equity or s.initial
        mean = s.total / s.n if s.n else 0.0
        var = (s.total_sq - s.n * mean * mean) / (s.n - 1) if s.n > 1 else 0.0
        sharpe = mean / math.sqrt(var) * math.sqrt(self.ppy) if var > 0 else 0.0
        return {"equity": equity, "total_return": equity / s.initial - 1, "sharpe": sharpe,
                "max_drawdown": s.max_drawdown, "trades": s.trades, "updated_at": time.time(),
                "bars": s.cursor, "position": s.held, "finished": s.finished}

    def persist(self) -> None:
        """State, metrics and heartbeat: after every tick."""
        atomic_write(self.run_dir / STATE_FILE, json.dumps(asdict(self.state)))
        atomic_write(self.run_dir / METRICS_FILE, json.dumps(self.metrics()))
        (self.run_dir / HEARTBEAT_FILE).touch()

    def run(self) -> int:
        """Trade until the feed ends (exit 0), SIGTERM (flush, exit 0), or the broker is down."""
        self.persist()
        while self.state.cursor < len(self.bars) and not self.stopping:
            try:
                self.tick()
            except RetryError:
                return self._halt()
            self.persist()
            self._log_equity()
            if self.speed > 0:
                self._pause(1.0 / self.speed)
        if self.state.cursor >= len(self.bars):
            self.state.finished = True
            self.persist()
        return 0

    def _log_equity(self) -> None:
        s = self.state
        if s.last_equity is not None and s.cursor > 0:
            line = json.dumps([str(self.bars.time[s.cursor - 1]), round(s.last_equity, 6)])
            with (self.run_dir / EQUITY_FILE).open("a") as fh:
                fh.write(line + "\n")

    def _pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and (left := end - time.monotonic()) > 0:
            self.sleep(min(left, 0.05))

    def _halt(self) -> int:
        """The broker keeps failing: flatten at the last close and stop with a clear code."""
        s = self.state
        price = float(self.bars.close[max(0, s.cursor - 1)])
        if s.units:
            s.cash += s.units * price
            self._record(-s.units, price, 0.0, "emergency_flatten")
            s.units, s.trades = 0.0, s.trades + 1
        s.pending, s.held = None, 0.0
        self.persist()
        return EXIT_BROKER_DOWN


