"""The RL example's plug-in: a small numpy policy that maps recent returns to a position.

Features at bar t: the last `lags` log returns, each divided by the volatility (std of the last
`vol_window` log returns) — only bars up to t's close, so it passes the look-ahead check. The
policy is a one-hidden-layer MLP (`hidden` tanh units; `hidden: 0` is linear), squashed by tanh
and rounded to steps of `step` (fewer, larger rebalances). Its weights come from
`weights.npy` in the trial's model_dir, written by `train.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline_v2.backtest.plugins import BarsView, Strategy

WEIGHTS_FILE = "weights.npy"


def n_weights(lags: int, hidden: int) -> int:
    """How many numbers the policy has."""
    if hidden == 0:
        return lags + 1
    return (lags + 1) * hidden + hidden + 1


def features(close: np.ndarray, lags: int, vol_window: int) -> np.ndarray:
    """One row per bar: the last `lags` vol-scaled log returns (zeros until there is history)."""
    r = np.zeros(len(close))
    r[1:] = np.diff(np.log(close))
    out = np.zeros((len(close), lags))
    if len(close) <= vol_window:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(r, vol_window)
    vol = np.full(len(close), np.nan)
    vol[vol_window - 1:] = windows.std(axis=1)
    scaled = np.divide(r, vol, out=np.zeros_like(r), where=np.isfinite(vol) & (vol > 0))
    for k in range(lags):
        out[vol_window + k:, k] = scaled[vol_window: len(close) - k]
    return out


def act(weights: np.ndarray, x: np.ndarray, hidden: int, step: float) -> np.ndarray:
    """Positions in [-1, 1] for feature rows `x`."""
    lags = x.shape[1]
    if hidden == 0:
        raw = x @ weights[:lags] + weights[lags]
    else:
        w1 = weights[: lags * hidden].reshape(lags, hidden)
        b1 = weights[lags * hidden: (lags + 1) * hidden]
        w2 = weights[(lags + 1) * hidden: (lags + 2) * hidden]
        raw = np.tanh(x @ w1 + b1) @ w2 + weights[-1]
    return np.round(np.tanh(raw) / step) * step


class Policy(Strategy):
    """Loads `weights.npy` from model_dir (or takes `weights` directly, as training does)."""

    def __init__(self, params: dict[str, Any], model_dir: Path | None,
                 weights: np.ndarray | None = None) -> None:
        super().__init__(params, model_dir)
        self.lags = int(params.get("lags", 5))
        self.hidden = int(params.get("hidden", 0))
        self.vol_window = int(params.get("vol_window", 20))
        self.step_size = float(params.get("step", 0.25))
        if weights is None:
            if model_dir is None:
                raise ValueError(f"no model_dir to load {WEIGHTS_FILE} from")
            weights = np.load(Path(model_dir) / WEIGHTS_FILE)
        if weights.shape != (n_weights(self.lags, self.hidden),):
            raise ValueError(f"{WEIGHTS_FILE} holds {weights.shape} numbers; lags={self.lags} "
                             f"hidden={self.hidden} need {n_weights(self.lags, self.hidden)}")
        self.weights = weights

    def positions(self, bars: BarsView) -> np.ndarray:
        """Vectorised over every bar: the backtest and the stress test."""
        x = features(bars.close, self.lags, self.vol_window)
        out = act(self.weights, x, self.hidden, self.step_size)
        out[: self.vol_window + self.lags] = 0.0  # not enough history yet
        return out

    def step(self, history: BarsView) -> float:
        """One new bar (the paper trader): features of the newest bar only."""
        need = self.vol_window + self.lags
        if len(history) <= need:
            return 0.0
        tail = history.close[-(need + 1):]
        x = features(tail, self.lags, self.vol_window)[-1:]
        return float(act(self.weights, x, self.hidden, self.step_size)[0])
