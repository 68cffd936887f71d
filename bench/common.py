"""Shared helpers for the benchmarks: medians, subprocess timing, result tables."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / "bench" / ".cache"


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    """Median wall time of `fn` in seconds over `repeat` runs."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def run_child(mode: str, target: str, *args: str) -> tuple[float, float]:
    """Run `python -m target args` or `python -c target`; return (wall s, peak RSS MB)."""
    with tempfile.NamedTemporaryFile(suffix=".peak") as peak:
        argv = [sys.executable, str(ROOT / "bench" / "peak.py"), peak.name, mode, target, *args]
        started = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr[-2000:]!r}")
        return wall, float(Path(peak.name).read_text() or 0)


def self_peak_mb() -> float:
    """This process's peak RSS in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(name: str, rows: list[tuple[str, str, str, str]], extra: dict[str, Any]) -> None:
    """Print a table (metric, ours, peer, ratio/target) and save JSON under bench/results/."""
    width = max(len(r[0]) for r in rows) + 2
    print(f"\n== {name} ==")
    print(f"{'metric':<{width}}{'pipeline_v2':>16}{'peer':>16}   note")
    for metric, ours, peer, note in rows:
        print(f"{metric:<{width}}{ours:>16}{peer:>16}   {note}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"rows": rows, **extra, "python": sys.version.split()[0]}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))


def ms(seconds: float) -> str:
    """Seconds as milliseconds text."""
    return f"{seconds * 1000:.3f} ms"
