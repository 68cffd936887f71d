"""CLI start: `pipeline --help` and `pipeline status --json` (small state DB) as whole processes,
beside a bare interpreter (`python -c pass`) in the same run."""

from __future__ import annotations

import sys

from bench.common import BIN, CACHE, case, repeats, wall_of
from bench.fixtures import copy_db, state_db, workspace


def run() -> None:
    n = repeats(15, 5)
    work = CACHE / "cli_run"
    config = workspace(work, copy_db(state_db(10_000), work / "state.db"), None, 0)
    pipeline = str(BIN / "pipeline")
    bare = [x * 1000 for x in wall_of([sys.executable, "-c", "pass"], n)]
    wall_of([pipeline, "--help"], 1)  # page cache and .pyc warm for both
    help_ = [x * 1000 for x in wall_of([pipeline, "--help"], n)]
    status = [x * 1000 for x in wall_of([pipeline, "status", "--json", "-c", str(config)], n)]
    case("cli", "`pipeline --help`, whole process", "ms", help_, peer="python -c pass",
         peer_samples=bare, target=100)
    case("cli", "`pipeline status --json`, 10k trials, whole process", "ms", status,
         peer="python -c pass", peer_samples=bare, target=150)
