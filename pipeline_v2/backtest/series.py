"""A trial's out-of-sample return series on disk, compactly, and a study's matrix of them.

One `.npz` per backtest in the trial's run_dir: `time` (int64 seconds since the epoch, the bar
each return ends at) and `returns` (float32 per-bar returns of the equity curve): 12 bytes a bar,
outside the state DB so status queries stay light. The stage's results name the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def save_returns(path: Path, times: np.ndarray, equity: np.ndarray) -> Path:
    """Write the per-bar returns of `equity` stamped with `times[1:]`."""
    returns = (equity[1:] / equity[:-1] - 1.0).astype(np.float32)
    stamps = times[1:].astype("datetime64[s]").astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:  # a file handle: numpy would otherwise append ".npz"
        np.savez(fh, time=stamps, returns=returns)
    return path


def load_returns(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """(times as int64 seconds, returns as float64) from a file save_returns wrote."""
    with np.load(path) as data:
        return data["time"].astype(np.int64), data["returns"].astype(np.float64)


def aligned_matrix(series: Sequence[tuple[np.ndarray, np.ndarray]]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(common times, T x N returns) on the timestamps every series has."""
    if not series:
        return np.empty(0, dtype=np.int64), np.empty((0, 0))
    common = series[0][0]
    for times, _ in series[1:]:
        common = np.intersect1d(common, times, assume_unique=True)
    columns = [returns[np.searchsorted(times, common)] for times, returns in series]
    return common, np.column_stack(columns) if columns else np.empty((len(common), 0))
