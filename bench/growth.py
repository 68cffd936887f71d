"""What the state DB's growth costs, at 10k / 100k / 1M trials (QUICK: 10k only).

The state DBs hold 25 % passed trials waiting for a deploy slot and 75 % rejected ones (built
with set-based SQL, bench/fixtures.py). Per size: one promotion pass (in-process, the decision
that blocks the loop), `status --json` and `trials --json` as whole processes (with peak RSS),
the first discovery catch-up of an N-trial Optuna study into an empty state DB (whole process,
peak RSS), and a real daemon supervising 100 traders (10 in QUICK): idle CPU, RSS, crash
detection.
"""

from __future__ import annotations

import time

from bench.common import (
    BIN,
    CACHE,
    QUICK,
    SIZES,
    case,
    pct,
    repeats,
    run_child,
    timed,
    wall_of,
)
from bench.daemons import run_daemon
from bench.fixtures import copy_db, optuna_study, state_db, workspace

TRADERS = 10 if QUICK else 100
IDLE_S = 3.0 if QUICK else 20.0
KILLS = 5 if QUICK else 30


def force_promotion(deployer, now: float) -> None:
    """One promotion pass now, whatever the deployer's throttle says."""
    deployer._promoted_for, deployer._promote_not_before = (), 0.0
    deployer._promote(now)


def promotion_pass_seconds(config_path, n: int) -> tuple[float, list[float]]:
    """The first pass (fills every slot) and then steady-state passes, in seconds."""
    from pipeline_v2.config import load_config
    from pipeline_v2.deployer import Deployer
    from pipeline_v2.store import open_store
    from pipeline_v2.supervisor import Supervisor

    config = load_config(config_path)
    store = open_store(config)
    deployer = Deployer(config, store, Supervisor(None))
    now = time.time()
    started = time.perf_counter()
    force_promotion(deployer, now)
    first = time.perf_counter() - started
    count = repeats(5, 2) if n < 1_000_000 else repeats(3, 1)
    steady = timed(lambda: force_promotion(deployer, now + 1), count)
    store.close()
    return first, steady


def run() -> None:
    for n in SIZES:
        label = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
        print(f" -- {label} trials", flush=True)
        work = CACHE / f"growth_{label}"
        state = copy_db(state_db(n), work / "state.db")
        config = workspace(work, state, None, TRADERS)
        first, steady = promotion_pass_seconds(config, n)
        case("growth", f"{label}: promotion pass (steady state)", "ms",
             [s * 1000 for s in steady], target=10, note=f"first pass {first * 1000:.0f} ms")
        status = wall_of([str(BIN / "pipeline"), "status", "--json", "-c", str(config)],
                         repeats(5, 2))
        case("growth", f"{label}: `status --json`, whole process", "ms",
             [s * 1000 for s in status], target=150)
        wall, peak = run_child(["-m", "pipeline_v2", "trials", "--json", "-c", str(config)])
        case("growth", f"{label}: `trials --json`, whole process", "s", [wall])
        case("growth", f"{label}: `trials --json`, peak RSS", "MB", [peak], target=100)
        ours = run_daemon(config, state, TRADERS, IDLE_S, KILLS)
        case("growth", f"{label}: daemon idle CPU, {TRADERS} traders, {IDLE_S:g} s", "%",
             [ours.cpu_percent], target=0.1 if TRADERS == 100 else None)
        case("growth", f"{label}: daemon RSS, start / end of idle", "MB",
             [ours.rss_mb, ours.rss_end_mb], target=150)
        case("growth", f"{label}: crash detection p50 ({KILLS} kills)", "ms",
             [pct(ours.detect_s, 50) * 1000])
        case("growth", f"{label}: crash detection p99 ({KILLS} kills)", "ms",
             [pct(ours.detect_s, 99) * 1000], target=20)
        storage = optuna_study(n)
        fresh = work / "catchup"
        catchup_config = workspace(fresh, fresh / "state.db", storage, 0)
        for leftover in fresh.glob("state.db*"):
            leftover.unlink()
        wall, peak = run_child(["-m", "pipeline_v2", "discover", "-c", str(catchup_config)])
        case("growth", f"{label}: first discovery catch-up, whole process", "s", [wall])
        case("growth", f"{label}: first discovery catch-up, peak RSS", "MB", [peak], target=300)
