"""Shared helpers for the benchmarks: cases, medians, subprocess timing and peak memory.

Every benchmark module has `run() -> None` and records its figures with `case(...)`; the
harness (`python -m bench`) writes them all to bench/results.json and prints one table.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_JSON = ROOT / "bench" / "results.json"
CACHE = ROOT / "bench" / ".cache"
BIN = Path(sys.executable).parent
# `make bench QUICK=1`: small sizes and few repeats, a smoke run in under two minutes.
QUICK = os.environ.get("QUICK", "") not in ("", "0")
SIZES = [10_000] if QUICK else [10_000, 100_000, 1_000_000]


def repeats(full: int, quick: int = 2) -> int:
    """How many times to repeat a measurement in this mode."""
    return quick if QUICK else full


@dataclass
class Case:
    """One measured figure, with its spread, the peer's figure from the same run and a target."""

    group: str
    name: str
    unit: str
    samples: list[float]
    peer: str | None = None
    peer_samples: list[float] = field(default_factory=list)
    target: float | None = None
    lower_is_better: bool = True
    note: str = ""

    @property
    def figure(self) -> float:
        """The median of the samples."""
        return statistics.median(self.samples)

    @property
    def peer_figure(self) -> float | None:
        """The peer's median, if it was measured."""
        return statistics.median(self.peer_samples) if self.peer_samples else None

    @property
    def ratio(self) -> float | None:
        """How many times better than the peer (> 1: we win)."""
        peer = self.peer_figure
        if peer is None or not self.figure or not peer:
            return None
        return peer / self.figure if self.lower_is_better else self.figure / peer

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None: no target)."""
        if self.target is None:
            return None
        return self.figure <= self.target if self.lower_is_better else self.figure >= self.target

    def as_json(self) -> dict[str, Any]:
        """The case as results.json stores it."""
        data = asdict(self)
        data.update(figure=self.figure, repeats=len(self.samples),
                    spread=[min(self.samples), max(self.samples)],
                    peer_figure=self.peer_figure, ratio=self.ratio, met=self.met)
        return data


CASES: list[Case] = []
# Set by the harness: called after every case, so an interrupted run keeps what it measured.
ON_CASE: list[Callable[[], Any]] = []


def case(group: str, name: str, unit: str, samples: Sequence[float], **kw: Any) -> Case:
    """Record a case (samples in `unit`) and print it at once."""
    found = Case(group, name, unit, [float(s) for s in samples], **kw)
    CASES.append(found)
    print(f"  {name}: {fmt(found.figure, unit)}"
          + (f"  ({found.peer}: {fmt(found.peer_figure, unit)})" if found.peer_samples else ""),
          flush=True)
    for hook in ON_CASE:
        hook()
    return found


def fmt(value: float | None, unit: str) -> str:
    """A figure with its unit, rounded for reading."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}"


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    """Wall times of `fn` in seconds over `n` runs."""
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def run_child(argv: Sequence[str], cwd: Path = ROOT, env: dict[str, str] | None = None,
              check: bool = True) -> tuple[float, float]:
    """Run a command under bench/peak.py; return (wall seconds, its peak RSS in MB).

    argv[0] must be a Python script path or `-m`/`-c` form as in `python ARGV...`.
    """
    with tempfile.NamedTemporaryFile(suffix=".peak") as peak:
        command = [sys.executable, str(ROOT / "bench" / "peak.py"), peak.name, *argv]
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        wall = time.perf_counter() - started
        if check and proc.returncode != 0:
            raise RuntimeError(f"{command} exited {proc.returncode}: {proc.stderr[-2000:]!r}")
        return wall, float(Path(peak.name).read_text() or 0)


def wall_of(argv: Sequence[str], n: int, cwd: Path = ROOT) -> list[float]:
    """Whole-process wall times of a command (stdout discarded), n runs."""
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return samples


def self_peak_mb() -> float:
    """This process's peak RSS in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]
