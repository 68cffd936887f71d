"""Supervision on the real daemon beside supervisord (same `sleep` programs, same run): idle CPU
and RSS at 0 / 10 / 100 traders, crash detection p50 / p99 at 100, unique memory per trader."""

from __future__ import annotations

from bench.common import CACHE, QUICK, case, pct
from bench.daemons import run_daemon, run_supervisord
from bench.fixtures import copy_db, state_db, workspace

COUNTS = [0, 10] if QUICK else [0, 10, 100]
IDLE_S = 2.0 if QUICK else 10.0
KILLS = 5 if QUICK else 30


def run() -> None:
    for n in COUNTS:
        work = CACHE / f"supervision_{n}"
        state = copy_db(state_db(10_000), work / "state.db")
        config = workspace(work, state, None, n)
        kills = KILLS if n == COUNTS[-1] else 0
        ours = run_daemon(config, state, n, IDLE_S, kills)
        peer = run_supervisord(work / "supervisord", n, IDLE_S, kills)
        case("supervision", f"idle CPU, {n} traders, {IDLE_S:g} s", "%", [ours.cpu_percent],
             peer="supervisord", peer_samples=[peer.cpu_percent],
             target=0.1 if n == 100 else None)
        case("supervision", f"supervising process RSS, {n} traders", "MB",
             [ours.rss_mb, ours.rss_end_mb], peer="supervisord",
             peer_samples=[peer.rss_mb, peer.rss_end_mb])
        if kills:
            case("supervision", f"crash detection p50, {kills} kills of {n}", "ms",
                 [pct(ours.detect_s, 50) * 1000], peer="supervisord",
                 peer_samples=[pct(peer.detect_s, 50) * 1000])
            case("supervision", f"crash detection p99, {kills} kills of {n}", "ms",
                 [pct(ours.detect_s, 99) * 1000], peer="supervisord",
                 peer_samples=[pct(peer.detect_s, 99) * 1000], target=20)
        if n:
            case("supervision", "unique memory (USS) per trader's shim", "MB",
                 ours.uss_per_child_mb, target=1.0,
                 note="supervisord runs programs directly: no per-program overhead")
