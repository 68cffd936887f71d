"""CLI start: `pipeline --help`, `pipeline status --help` and `pipeline status --json` (on a
100-trial and a 10k-trial state DB) as whole processes, beside a bare interpreter (`python -c
pass`). The commands run in turn, round after round (as hyperfine would run them one after the
other), so a change in the machine's load hits them all alike."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bench.common import BIN, CACHE, case, repeats, wall_of
from bench.fixtures import copy_db, state_db, workspace

BARE = "python -c pass"


def interleaved(commands: dict[str, Sequence[str]], n: int) -> dict[str, list[float]]:
    """Whole-process wall times in ms of each command, n rounds of one run each."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for argv in commands.values():
        wall_of(argv, 1)  # page cache and .pyc warm
    for _ in range(n):
        for name, argv in commands.items():
            samples[name].extend(x * 1000 for x in wall_of(argv, 1))
    return samples


def run() -> None:
    pipeline = str(BIN / "pipeline")
    configs = {}
    for trials in (100, 10_000):
        work = CACHE / f"cli_run_{trials}"
        configs[trials] = workspace(work, copy_db(state_db(trials), work / "state.db"), None, 0)
    times = interleaved({
        BARE: [sys.executable, "-c", "pass"],
        "--help": [pipeline, "--help"],
        "status --help": [pipeline, "status", "--help"],
        "status 100": [pipeline, "status", "--json", "-c", str(configs[100])],
        "status 10k": [pipeline, "status", "--json", "-c", str(configs[10_000])],
    }, repeats(21, 5))
    bare = {"peer": BARE, "peer_samples": times[BARE]}
    case("cli", "`pipeline --help`, whole process", "ms", times["--help"], target=100, **bare)
    case("cli", "`pipeline status --help`, whole process", "ms", times["status --help"], **bare)
    case("cli", "`pipeline status --json`, 100 trials, whole process", "ms", times["status 100"],
         target=150, **bare)
    case("cli", "`pipeline status --json`, 10k trials, whole process", "ms", times["status 10k"],
         target=150, **bare)
