"""Forged deployment rows: a row naming an unrelated live process (a `sleep` we started, in its
own session). Whatever the row says, the daemon and `pipeline stop --all` must never signal a
process that is not a trader they started."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from dataclasses import dataclass

import psutil
import pytest

from pipeline_v2.supervisor import boot_id
from tests.chaos import invariants as inv
from tests.chaos.harness import TALLY, DaemonUnderFire, Workspace, bystanders, run_until_idle

pytestmark = pytest.mark.chaos



def forge(ws: Workspace, victim: psutil.Process, status: str, *, exact: bool,
          trial: str = "status = 'paused'") -> None:
    """Point a deployment row of the trial matching `trial` (SQL) at `victim`."""
    conn = sqlite3.connect(ws.state_db, timeout=30, isolation_level=None)
    try:
        # By default the paused trial: nothing moves it meanwhile, so each run meets the same row.
        trial_id = conn.execute(f"SELECT id FROM trials WHERE {trial} LIMIT 1").fetchone()[0]
        now = time.time()
        create_time = victim.create_time() + (0 if exact else 10.0)
        conn.execute(
            "INSERT INTO deployments (trial_id, status, run_dir, pid, create_time, boot_id,"
            " started_at, spawned_at, next_start_at, reason, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [trial_id, status, str(ws.logs / "forged"), victim.pid, create_time, boot_id(),
             now, now, now - 1, "forged", now])
    finally:
        conn.close()
    TALLY.forged_rows += 1


@dataclass
class Aftermath:
    """What a daemon and `stop --all` did over a forged row."""

    signalled: list[str]
    daemon_alive: bool
    stop: subprocess.CompletedProcess[str]


def run_forged(ws: Workspace, status: str, *, exact: bool) -> Aftermath:
    """Discover, forge a row, run a daemon over it (reconcile, health checks, the stop grace),
    `stop --all` under it, stop it."""
    assert ws.cli("discover").returncode == 0
    assert ws.cli("pause", "0").returncode == 0
    daemon = DaemonUnderFire(ws)
    with bystanders(1) as (victim,):
        forge(ws, victim, status, exact=exact)
        daemon.start()
        assert daemon.wait_ready(), ws.root.joinpath("daemon.out").read_text()[-3000:]
        time.sleep(1.5)  # heartbeat timeout 1 s, stop grace 0.3 s: every check has run
        stopped = ws.cli("stop", "--all")
        time.sleep(1.0)
        alive = daemon.proc is not None and daemon.proc.poll() is None
        daemon.terminate()
        signalled = inv.untouched([victim])
    assert inv.integrity(ws) == []
    assert inv.orphans(ws) == []
    return Aftermath(signalled, alive, stopped)


@pytest.mark.parametrize("status", ["running", "stopping"])
def test_forged_row_with_a_stale_identity(make_workspace, status: str) -> None:
    """The row's create time does not match the live process: it is not that process."""
    ws = make_workspace(trials=4, seed=31)
    after = run_forged(ws, status, exact=False)
    assert after.signalled == []
    assert after.daemon_alive, ws.root.joinpath("daemon.out").read_text()[-3000:]


@pytest.mark.parametrize("status", ["running", "stopping"])
def test_forged_row_with_a_live_identity(make_workspace, status: str) -> None:
    """Even (pid, create time, boot id) matching exactly: the process is no shim of ours."""
    ws = make_workspace(trials=4, seed=33)
    after = run_forged(ws, status, exact=True)
    assert after.signalled == []
    assert after.daemon_alive, ws.root.joinpath("daemon.out").read_text()[-3000:]


def test_stop_all_is_not_blocked_by_a_stray_row(make_workspace) -> None:
    """`stop --all` stops what it can: one row whose trial cannot be retired (here forged on
    a paused trial) must not abort it for every other deployment."""
    ws = make_workspace(trials=4, seed=37)
    after = run_forged(ws, "running", exact=False)
    assert after.stop.returncode == 0, after.stop.stderr


def test_a_stray_live_row_does_not_block_idle(make_workspace) -> None:
    """A live deployment row whose trial is not deployed (here forged; a kill between the
    commits of item 2 leaves the same) must be settled, so `--until-idle` can end."""
    ws = make_workspace(trials=4, seed=35)
    daemon = DaemonUnderFire(ws)
    assert run_until_idle(daemon, timeout=120) == 0
    with bystanders(1) as (victim,):
        forge(ws, victim, "running", exact=False,
              trial="id NOT IN (SELECT trial_id FROM deployments)")
        code = run_until_idle(daemon, timeout=20)
        assert inv.untouched([victim]) == []
    assert code == 0, ws.root.joinpath("daemon.out").read_text()[-3000:]
    assert inv.one_live_deployment_per_trial(ws) == []
