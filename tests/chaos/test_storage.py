"""The Optuna storage under a running daemon: deleted, replaced, filled with garbage, and
write-locked (BEGIN EXCLUSIVE from another connection). The daemon must survive each, say
`degraded` while the storage is unusable, never stall its loop, and pick up what the storage
holds once it is usable again."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from tests.chaos import invariants as inv
from tests.chaos.harness import (
    TALLY,
    DaemonUnderFire,
    StatusReaders,
    Workspace,
    add_trials,
    run_until_idle,
    wait_for_row,
)

pytestmark = pytest.mark.chaos



def discovered(ws: Workspace, count: int, timeout: float = 60) -> bool:
    """Wait until the state DB holds `count` trials."""
    return wait_for_row(ws, f"SELECT 1 WHERE (SELECT COUNT(*) FROM trials) >= {count}",
                        timeout, 0.05)


def status(ws: Workspace) -> dict:
    """`pipeline status --json`, which must work whatever the storage is doing."""
    result = ws.cli("status", "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def wait_degraded(ws: Workspace, timeout: float = 20) -> dict:
    """Poll status until it says degraded (or give up and return the last one)."""
    deadline = time.monotonic() + timeout
    while True:
        data = status(ws)
        if data["pipeline"] == "degraded" or time.monotonic() > deadline:
            return data
        time.sleep(0.2)


def remove_storage(path: Path) -> None:
    """Delete the SQLite file and its sidecars."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def finish(ws: Workspace, daemon: DaemonUnderFire) -> None:
    """Stop the daemon cleanly, run to idle, and check every invariant."""
    assert daemon.proc is not None and daemon.proc.poll() is None, \
        ws.root.joinpath("daemon.out").read_text()[-3000:]
    daemon.terminate()
    assert run_until_idle(daemon, timeout=180) == 0, \
        ws.root.joinpath("daemon.out").read_text()[-3000:]
    assert ws.cli("stop", "--all").returncode == 0
    assert inv.db_invariants(ws) == {}
    assert inv.orphans(ws) == []


def test_storage_deleted_then_replaced(make_workspace) -> None:
    """Deleted under the daemon: degraded, alive. Replaced by a new file holding more trials:
    the new trials are found (the daemon must not keep reading the deleted inode)."""
    ws = make_workspace(trials=6, seed=21)
    daemon = DaemonUnderFire(ws)
    with StatusReaders(ws, 4):
        daemon.start()
        assert discovered(ws, 6)
        backup = ws.root / "backup.db"
        shutil.copy(ws.optuna_path, backup)
        remove_storage(ws.optuna_path)
        TALLY.storage_faults += 1
        data = wait_degraded(ws)
        assert daemon.proc.poll() is None
        assert data["pipeline"] == "degraded", data["pipeline_detail"]
        # The replacement: the same study plus 6 trials, written aside, then renamed in.
        add_trials(f"sqlite:///{backup}", ws.studies[0], 6, random.Random(22))
        os.replace(backup, ws.optuna_path)
        TALLY.storage_faults += 1
        assert discovered(ws, 12, timeout=30), "the replaced storage's new trials were missed"
    finish(ws, daemon)


def test_storage_filled_with_garbage(make_workspace) -> None:
    """Garbage where the SQLite file was: degraded with the reason, alive; once the file is
    good again (with new trials), discovery resumes."""
    ws = make_workspace(trials=6, seed=23)
    daemon = DaemonUnderFire(ws)
    with StatusReaders(ws, 4):
        daemon.start()
        assert discovered(ws, 6)
        good = ws.optuna_path.read_bytes()
        remove_storage(ws.optuna_path)  # a checkpointed copy is the whole DB
        ws.optuna_path.write_bytes(random.Random(1).randbytes(len(good) or 65536))
        TALLY.storage_faults += 1
        data = wait_degraded(ws)
        assert daemon.proc.poll() is None
        assert data["pipeline"] == "degraded", data["pipeline_detail"]
        ws.optuna_path.write_bytes(good)
        add_trials(ws.url, ws.studies[0], 4, random.Random(24))
        assert discovered(ws, 10, timeout=30), "discovery did not resume"
    finish(ws, daemon)


def test_storage_write_locked(make_workspace) -> None:
    """BEGIN EXCLUSIVE held on the storage for 4 s: the loop keeps turning meanwhile (its
    heartbeat in the state DB moves on), then the trials added before the lock are found."""
    ws = make_workspace(trials=6, seed=25)
    daemon = DaemonUnderFire(ws)
    daemon.start()
    assert discovered(ws, 6)
    assert daemon.wait_ready()
    add_trials(ws.url, ws.studies[0], 3, random.Random(26))
    locker = sqlite3.connect(ws.optuna_path, timeout=30, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    TALLY.storage_faults += 1
    try:
        time.sleep(0.5)  # let the daemon meet the lock
        before = heartbeat(ws)
        time.sleep(3.5)
        after = heartbeat(ws)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert after > before, "the daemon's loop stalled behind the storage's lock"
    assert discovered(ws, 9, timeout=30)
    finish(ws, daemon)


def heartbeat(ws: Workspace) -> float:
    """When the daemon last wrote its heartbeat (health_check_interval is 0.3 s)."""
    rows = inv.safe_read(ws, "SELECT checked_at FROM health WHERE component = 'daemon'")
    return float(rows[0][0]) if rows else 0.0
