"""Strategy families whose parameters an Optuna trial tunes. Each turns bars into a target
position per bar (+1 long, 0 flat, -1 short) decided at that bar's close.

- `sma_cross(fast, slow, long_short=False)`: long after the fast simple moving average of closes
  crosses above the slow one, flat (or short) after it crosses below; flat before the first cross.
- `mean_reversion(window, entry_z, exit_z=0.0, long_short=False)`: z = (close - SMA) / rolling
  std (ddof 0). Long when z < -entry_z until z >= -exit_z; with long_short also short when
  z > entry_z until z <= exit_z.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline_v2.backtest.data import Bars
from pipeline_v2.backtest.errors import DataError, StrategyError


@dataclass(frozen=True)
class Param:
    """One tunable parameter."""

    kind: type
    default: Any = None
    minimum: float | None = None


@dataclass(frozen=True)
class Strategy:
    """A family: its parameters, how many bars it needs, and its signal function."""

    name: str
    params: dict[str, Param]
    warmup: Callable[[dict[str, Any]], int]
    signal: Callable[[Bars, dict[str, Any]], np.ndarray]
    check: Callable[[dict[str, Any]], str | None] = lambda p: None


def sma(values: np.ndarray, window: int) -> np.ndarray:
    """Simple moving average; NaN for the first window-1 bars."""
    out = np.full(len(values), np.nan)
    if window <= len(values):
        csum = np.cumsum(np.insert(values, 0, 0.0))
        out[window - 1:] = (csum[window:] - csum[:-window]) / window
    return out


def rolling_std(values: np.ndarray, window: int) -> np.ndarray:
    """Rolling population standard deviation (ddof 0); NaN for the first window-1 bars."""
    out = np.full(len(values), np.nan)
    if window <= len(values):
        view = np.lib.stride_tricks.sliding_window_view(values, window)
        out[window - 1:] = view.std(axis=1)
    return out


def hold_last(events: np.ndarray) -> np.ndarray:
    """Forward-fill: each bar takes the last non-NaN event at or before it (0 before any)."""
    index = np.where(~np.isnan(events), np.arange(len(events)), -1)
    np.maximum.accumulate(index, out=index)
    return np.where(index >= 0, events[np.maximum(index, 0)], 0.0)


def _sma_cross(bars: Bars, p: dict[str, Any]) -> np.ndarray:
    fast, slow = sma(bars.close, p["fast"]), sma(bars.close, p["slow"])
    above = fast > slow
    below = fast < slow
    events = np.full(len(bars), np.nan)
    up = np.zeros(len(bars), dtype=bool)
    down = np.zeros(len(bars), dtype=bool)
    up[1:] = below[:-1] & above[1:]
    down[1:] = above[:-1] & below[1:]
    events[up] = 1.0
    events[down] = -1.0 if p.get("long_short") else 0.0
    return hold_last(events)


def _machine(enter: np.ndarray, leave: np.ndarray, side: float) -> np.ndarray:
    events = np.full(len(enter), np.nan)
    events[leave] = 0.0
    events[enter] = side  # an entry wins over an exit on the same bar
    return hold_last(events)


def _mean_reversion(bars: Bars, p: dict[str, Any]) -> np.ndarray:
    window, entry, exit_ = p["window"], float(p["entry_z"]), float(p.get("exit_z", 0.0))
    mean, std = sma(bars.close, window), rolling_std(bars.close, window)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (bars.close - mean) / std
    valid = np.isfinite(z)
    longs = _machine(valid & (z < -entry), valid & (z >= -exit_), 1.0)
    if not p.get("long_short"):
        return longs
    shorts = _machine(valid & (z > entry), valid & (z <= exit_), 1.0)
    return longs - shorts


def _check_cross(p: dict[str, Any]) -> str | None:
    if p["fast"] >= p["slow"]:
        return f"fast ({p['fast']}) must be smaller than slow ({p['slow']})"
    return None


def _check_reversion(p: dict[str, Any]) -> str | None:
    if float(p.get("exit_z", 0.0)) >= float(p["entry_z"]):
        return f"exit_z ({p.get('exit_z', 0.0)}) must be smaller than entry_z ({p['entry_z']})"
    return None


STRATEGIES: dict[str, Strategy] = {
    "sma_cross": Strategy(
        "sma_cross",
        {"fast": Param(int, None, 1), "slow": Param(int, None, 2),
         "long_short": Param(bool, False)},
        warmup=lambda p: p["slow"] + 1, signal=_sma_cross, check=_check_cross,
    ),
    "mean_reversion": Strategy(
        "mean_reversion",
        {"window": Param(int, None, 2), "entry_z": Param(float, None, 0.0),
         "exit_z": Param(float, 0.0), "long_short": Param(bool, False)},
        warmup=lambda p: p["window"] + 1, signal=_mean_reversion, check=_check_reversion,
    ),
}


def resolve(name: str, params: dict[str, Any]) -> tuple[Strategy, dict[str, Any]]:
    """The strategy and its params, coerced and checked; StrategyError says what is wrong."""
    strategy = STRATEGIES.get(name)
    if strategy is None:
        raise StrategyError(f'unknown strategy "{name}" (expected one of {", ".join(STRATEGIES)})')
    unknown = sorted(set(params) - set(strategy.params) - {"strategy"})
    if unknown:
        raise StrategyError(f'{name}: unknown parameter "{unknown[0]}" '
                            f"(expected {', '.join(strategy.params)})")
    clean: dict[str, Any] = {}
    for key, spec in strategy.params.items():
        value = params.get(key, spec.default)
        if value is None:
            raise StrategyError(f'{name}: missing parameter "{key}"')
        clean[key] = _coerce(name, key, value, spec)
    problem = strategy.check(clean)
    if problem:
        raise StrategyError(f"{name}: {problem}")
    return strategy, clean


def _coerce(name: str, key: str, value: Any, spec: Param) -> Any:
    try:
        if spec.kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return value.lower() in ("true", "1")
            return bool(value)
        number = float(value)
        if spec.kind is int:
            if number != int(number):
                raise ValueError
            number = int(number)
    except (TypeError, ValueError):
        raise StrategyError(f'{name}: parameter "{key}" must be {spec.kind.__name__}, '
                            f"got {value!r}") from None
    if spec.minimum is not None and number < spec.minimum:
        raise StrategyError(f'{name}: parameter "{key}" must be >= {spec.minimum:g}, got {value!r}')
    return number


def warmup_of(name: str, params: dict[str, Any]) -> int:
    """Bars the strategy needs before its first signal."""
    strategy, clean = resolve(name, params)
    return int(strategy.warmup(clean))


def positions(bars: Bars, name: str, params: dict[str, Any], trade_from: int = 0) -> np.ndarray:
    """Target position per bar from `trade_from` on; the bars before it only warm up the
    indicators. Checks there are enough bars in all."""
    strategy, clean = resolve(name, params)
    needed = strategy.warmup(clean)
    if len(bars) < needed:
        shown = ", ".join(f"{k}={v}" for k, v in clean.items())
        history = f" (and {trade_from} before the window)" if trade_from else ""
        raise DataError(f"{bars.source}: {len(bars) - trade_from} bars{history} are too few for "
                        f"{name}({shown}); it needs at least {needed}")
    return strategy.signal(bars, clean)[trade_from:]
