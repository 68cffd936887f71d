"""Strategy plug-ins: one resolver from a strategy name to the code that decides positions.

A name is a builtin family (`sma_cross`, `mean_reversion`) or `"package.module:name"`. The
backtest, the stress test and the paper trader all get a `Strategy` from `load_strategy` and
call the same code: `positions(bars)` over a whole array, or `step(history)` once per new bar.

The contract (see README "Your own strategy"):
- a class `Name(params, model_dir)` with `positions(self, bars) -> array` (one target position
  in [-1, 1] per bar, decided at that bar's close, from bars up to that close only) and,
  optionally, `step(self, history) -> float` (the position for the last bar of `history`,
  called once per new bar, in order; it may keep state). The default `step` is
  `positions(history)[-1]`. Subclassing `Strategy` is optional;
- or a plain function `name(bars, params, model_dir) -> array` (vectorised only).
`bars` is a read-only `BarsView`: open, high, low, close, volume (float64) and timestamps
(datetime64[s]), all numpy arrays with writeable=False.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_v2.backtest import strategies as families
from pipeline_v2.backtest.data import Bars
from pipeline_v2.backtest.errors import StrategyError

PLUGIN_NAME = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
HISTORY_LIMIT = 5000  # bars `step` sees at most: bounds the cost of the default step


@dataclass(frozen=True)
class BarsView:
    """Read-only OHLCV arrays handed to a plug-in; `timestamps` is datetime64[s]."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.close)

    @property
    def time(self) -> np.ndarray:
        """Alias of `timestamps` (the engine's own name)."""
        return self.timestamps


def _frozen(values: np.ndarray) -> np.ndarray:
    view = values.view()
    view.flags.writeable = False
    return view


def view_of(bars: Bars, stop: int | None = None, start: int = 0) -> BarsView:
    """A read-only view of bars [start, stop) — no copy."""
    cut = slice(start, stop)
    return BarsView(*(_frozen(getattr(bars, name)[cut])
                      for name in ("open", "high", "low", "close", "volume", "time")))


class Strategy:
    """Base class of a plug-in: override `positions`; override `step` to keep state."""

    warmup: int = 0  # bars before a backtest window its indicators want to warm up on

    def __init__(self, params: dict[str, Any], model_dir: Path | None) -> None:
        self.params = params
        self.model_dir = model_dir

    def positions(self, bars: BarsView) -> np.ndarray:
        """Target position in [-1, 1] per bar, decided at each bar's close."""
        raise NotImplementedError

    def step(self, history: BarsView) -> float:
        """The position for the newest bar of `history` (called once per bar, in order)."""
        return float(np.asarray(self.positions(history))[-1])


class Builtin(Strategy):
    """A builtin family (`sma_cross`, `mean_reversion`) behind the plug-in contract."""

    def __init__(self, name: str, params: dict[str, Any], model_dir: Path | None = None) -> None:
        self.family, clean = families.resolve(name, params)
        super().__init__(clean, model_dir)
        self.name = name

    @property
    def warmup(self) -> int:
        """Bars it needs before it can decide anything."""
        return self.family.warmup(self.params)

    def positions(self, bars: BarsView) -> np.ndarray:
        """The family's signal."""
        return self.family.signal(bars, self.params)  # type: ignore[arg-type]


class FunctionStrategy(Strategy):
    """Adapter: a plain function `f(bars, params, model_dir) -> array` as a Strategy."""

    def __init__(self, fn: Callable[..., Any], params: dict[str, Any],
                 model_dir: Path | None) -> None:
        super().__init__(params, model_dir)
        self.fn = fn

    def positions(self, bars: BarsView) -> np.ndarray:
        """Call the function."""
        return self.fn(bars, self.params, self.model_dir)


def is_plugin(name: str) -> bool:
    """Whether `name` names a plug-in (`module:name`) rather than a builtin family."""
    return ":" in name


def import_plugin(name: str) -> Any:
    """The class or function `name` points at; StrategyError in one line if it cannot work."""
    if not PLUGIN_NAME.match(name):
        raise StrategyError(f'"{name}": expected "package.module:name" or one of '
                            f"{', '.join(families.STRATEGIES)}")
    module_name, _, attr = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # a plug-in's own import-time error is reported the same way
        raise StrategyError(f'cannot import "{name}": {exc}') from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise StrategyError(f'cannot import "{name}": module "{module_name}" has no '
                                f'attribute "{attr}"')
        obj = getattr(obj, part)
    _check_shape(name, obj)
    return obj


def _check_shape(name: str, obj: Any) -> None:
    expected = ("expected a class (params, model_dir) with positions(bars), or a function "
                "(bars, params, model_dir)")
    if inspect.isclass(obj):
        if not callable(getattr(obj, "positions", None)):
            raise StrategyError(f'"{name}": class {obj.__name__} has no positions(bars) method; '
                                f"{expected}")
        _check_arity(name, obj, 2, expected)
        _check_arity(name, obj.positions, 2, expected, f"{obj.__name__}.positions")
    elif callable(obj):
        _check_arity(name, obj, 3, expected)
    else:
        raise StrategyError(f'"{name}": is a {type(obj).__name__}, not a class or function; '
                            f"{expected}")


def _check_arity(name: str, fn: Any, count: int, expected: str, label: str | None = None) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins and C callables: nothing to check
    try:
        signature.bind(*([None] * count))
    except TypeError:
        shown = label or getattr(fn, "__name__", name)
        raise StrategyError(f'"{name}": {shown}{signature} does not take '
                            f"{count - (1 if label else 0)} argument(s); {expected}") from None


def check_name(name: Any) -> None:
    """StrategyError unless `name` is a builtin family or a plug-in that imports and fits."""
    if not isinstance(name, str) or not name:
        raise StrategyError(f"expected a strategy name, got {name!r}")
    if is_plugin(name):
        import_plugin(name)
    elif name not in families.STRATEGIES:
        raise StrategyError(f'unknown strategy "{name}" (expected one of '
                            f'{", ".join(families.STRATEGIES)}, or "package.module:name")')


def load_strategy(name: str, params: dict[str, Any], model_dir: Path | str | None = None
                  ) -> Strategy:
    """A ready Strategy for a builtin or plug-in name, given the trial's params and model_dir."""
    if not isinstance(name, str) or not name:
        raise StrategyError(f"strategy: expected a name, got {name!r}")
    where = Path(model_dir) if model_dir else None
    if not is_plugin(name):
        return Builtin(name, params, where)
    obj = import_plugin(name)
    plain = {k: v for k, v in params.items() if k != "strategy"}
    try:
        if inspect.isclass(obj):
            strategy = obj(plain, where)
            if not isinstance(strategy, Strategy):  # duck-typed: give it the default step
                strategy = _Wrapped(strategy, plain, where)
            return strategy
        return FunctionStrategy(obj, plain, where)
    except StrategyError:
        raise
    except Exception as exc:
        raise StrategyError(f'"{name}": cannot create the strategy: '
                            f"{type(exc).__name__}: {exc}") from None


class _Wrapped(Strategy):
    """A class that does not subclass Strategy: forward positions, and step if it has one."""

    def __init__(self, inner: Any, params: dict[str, Any], model_dir: Path | None) -> None:
        super().__init__(params, model_dir)
        self.inner = inner

    def positions(self, bars: BarsView) -> np.ndarray:
        """The plug-in's positions."""
        return self.inner.positions(bars)

    def step(self, history: BarsView) -> float:
        """The plug-in's step, else the last of its positions."""
        if callable(getattr(self.inner, "step", None)):
            return self.inner.step(history)
        return super().step(history)


def has_own_step(strategy: Strategy) -> bool:
    """Whether `step` is the plug-in's own (it may keep state), not the default."""
    if isinstance(strategy, _Wrapped):
        return callable(getattr(strategy.inner, "step", None))
    return type(strategy).step is not Strategy.step


def label(strategy: Strategy) -> str:
    """How errors name the strategy."""
    if isinstance(strategy, Builtin):
        return strategy.name
    inner = strategy.inner if isinstance(strategy, _Wrapped) else strategy
    if isinstance(inner, FunctionStrategy):
        inner = inner.fn
    kind = inner if inspect.isclass(inner) or inspect.isfunction(inner) else type(inner)
    return f"{kind.__module__}:{kind.__qualname__}"


def checked(strategy: Strategy, values: Any, times: np.ndarray, offset: int = 0) -> np.ndarray:
    """`values` as float64, or StrategyError naming the first bad bar (index and timestamp)."""
    name = label(strategy)
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StrategyError(f"{name}: positions must be numbers, got {type(values).__name__} "
                            f"({exc})") from None
    if out.shape != times.shape:
        raise StrategyError(f"{name}: returned {out.shape[0] if out.ndim == 1 else out.shape} "
                            f"position(s) for {len(times)} bars; expected one per bar")
    bad = np.flatnonzero(~(np.abs(out) <= 1.0))  # NaN fails the comparison too
    if bad.size:
        i = int(bad[0])
        raise StrategyError(f"{name}: position at bar {i + offset} ({times[i]}) is "
                            f"{float(out[i])!r}; expected a number in [-1, 1] "
                            f"({bad.size} bad bar(s))")
    return out


def warmup_bars(strategy: Strategy) -> int:
    """How many bars before a window the strategy wants (its `warmup`, 0 if it has none)."""
    inner = strategy.inner if isinstance(strategy, _Wrapped) else strategy
    return max(0, int(getattr(inner, "warmup", 0) or 0))


def decide(strategy: Strategy, bars: Bars, trade_from: int = 0) -> np.ndarray:
    """Vectorised: validated target positions for every bar (backtest, stress); the bars before
    `trade_from` are warm-up only (they count for the too-few-bars check of a builtin)."""
    if isinstance(strategy, Builtin) and len(bars) < strategy.warmup:
        families.positions(bars, strategy.name, strategy.params, trade_from)  # raises
    return checked(strategy, strategy.positions(view_of(bars)), bars.time)


def decide_step(strategy: Strategy, bars: Bars, index: int, history_limit: int) -> float:
    """Incremental: the validated position for bar `index` from at most `history_limit` bars."""
    start = max(0, index + 1 - history_limit)
    value = strategy.step(view_of(bars, index + 1, start))
    name = label(strategy)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())[()]
    if not isinstance(value, int | float | np.floating | np.integer) or isinstance(value, bool):
        raise StrategyError(f"{name}: step() at bar {index} ({bars.time[index]}) returned "
                            f"{type(value).__name__}; expected one number in [-1, 1]")
    return float(checked(strategy, np.array([value]), bars.time[index:index + 1], index)[0])


def incremental_positions(strategy: Strategy, bars: Bars,
                          history_limit: int = HISTORY_LIMIT) -> np.ndarray:
    """Positions from `step`, one bar at a time, as the paper trader calls it."""
    return np.array([decide_step(strategy, bars, i, history_limit) for i in range(len(bars))])
