"""Trader faults: killed from outside, crash-looping, hung (no heartbeat), ignoring SIGTERM,
and leaving setsid'd / double-forked grandchildren behind."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import threading

import psutil
import pytest

from tests.chaos import invariants as inv
from tests.chaos.harness import (
    TALLY,
    TRADER,
    DaemonUnderFire,
    ProcessSampler,
    StatusReaders,
    Workspace,
    bystanders,
    run_until_idle,
)

pytestmark = pytest.mark.chaos

FAULT_MODES = ("crash_loop", "crash_once", "hang", "ignore_term")


class TraderKiller(threading.Thread):
    """SIGKILLs a random live trader of the workspace every `every` seconds."""

    def __init__(self, ws: Workspace, seed: int, every: float = 0.7) -> None:
        super().__init__(daemon=True, name="chaos-trader-killer")
        self.folder, self.rng, self.every = str(ws.root), random.Random(seed), every
        self.kills = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            live = [p for p in psutil.process_iter(["cmdline"])
                    if (c := p.info["cmdline"] or []) and len(c) > 2 and c[1] == TRADER
                    and c[2].startswith(self.folder)]
            if live:
                with contextlib.suppress(psutil.Error):
                    self.rng.choice(live).send_signal(signal.SIGKILL)
                    self.kills += 1

    def stop(self) -> None:
        """Stop killing."""
        self._halt.set()
        self.join(timeout=5)


def run_with_faults(ws: Workspace, *, seed: int, killer: bool,
                    timeout: float = 240) -> tuple[int, ProcessSampler]:
    """One daemon to idle with traders killed from outside meanwhile."""
    daemon = DaemonUnderFire(ws)
    sampler = ProcessSampler(ws.root)
    sampler.start()
    assassin = TraderKiller(ws, seed)
    with bystanders() as others, StatusReaders(ws, 1):
        if killer:
            assassin.start()
        code = run_until_idle(daemon, timeout=timeout)
        if killer:
            assassin.stop()
        stopped = ws.cli("stop", "--all")
        assert inv.untouched(others) == []
    sampler.stop()
    TALLY.trader_faults += assassin.kills
    assert stopped.returncode == 0, stopped.stderr
    return code, sampler


def test_trader_faults(make_workspace) -> None:
    """Crash loops end fatal (trial failed), hung and SIGTERM-deaf traders are stopped and
    restarted until they count as a crash loop, killed traders restart; all ends final."""
    ws = make_workspace(trials=24, seed=3, modes=("finish", *FAULT_MODES))
    code, sampler = run_with_faults(ws, seed=3, killer=True)
    assert code == 0, ws.root.joinpath("daemon.out").read_text()[-3000:]
    assert inv.db_invariants(ws) == {}
    assert inv.duplicate_processes(sampler) == []
    assert inv.orphans(ws) == []
    rows = inv.safe_read(ws, "SELECT t.status, t.params, (SELECT COUNT(*) FROM deployments d"
                             " WHERE d.trial_id = t.id) AS deployed FROM trials t")
    faulty = [(r["status"], json.loads(r["params"])["mode"]) for r in rows if r["deployed"]]
    TALLY.trader_faults += sum(1 for _, mode in faulty if mode in FAULT_MODES)
    for status, mode in faulty:
        if mode in ("crash_loop", "hang", "ignore_term"):
            assert status in ("failed", "retired"), (mode, status)


def test_trader_grandchildren_are_reaped(make_workspace) -> None:
    """A trader that setsid's one grandchild and double-forks another (both ignore SIGTERM):
    when it finishes, the shim must end them; nothing of ours is left afterwards."""
    ws = make_workspace(trials=4, seed=5, modes=("forker",))
    TALLY.trader_faults += 4
    code, sampler = run_with_faults(ws, seed=5, killer=False, timeout=40)
    assert code == 0, ws.root.joinpath("daemon.out").read_text()[-3000:]
    assert inv.orphans(ws) == []
    assert inv.db_invariants(ws) == {}
