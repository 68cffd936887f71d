"""A full disk under the state DB and the logs: a 16 MB tmpfs filled to the last byte while the
daemon runs, then emptied. Expected: `degraded` with the reason, nothing charged to trials,
work resuming when space returns. Needs root and a working `mount`; else skipped, saying why."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import invariants as inv
from tests.chaos.harness import TALLY, DaemonUnderFire, StatusReaders, run_until_idle, wait_for_row

pytestmark = pytest.mark.chaos

# Larger than SQLite's WAL autocheckpoint (1000 pages, 4 MB): on a smaller disk the WAL alone
# fills it before its first checkpoint, full or not, and no daemon could ever get it back.
DISK_SIZE = "16m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs, or a skip naming why there is none."""
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a small tmpfs: mounting one needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write a file (unbuffered) until the disk takes not one more byte."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    chunk = 65536
    try:
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return filler


def test_disk_full_then_space_returns(make_workspace, small_disk: Path) -> None:
    ws = make_workspace(trials=16, seed=61, state_dir=small_disk, logs_dir=small_disk / "logs")
    daemon = DaemonUnderFire(ws)
    with StatusReaders(ws, 2):
        daemon.start()
        assert daemon.wait_ready()
        assert wait_for_row(ws, "SELECT 1 FROM stages WHERE status = 'passed'", 60)
        filler = fill(small_disk)
        TALLY.disk_faults += 1
        time.sleep(3)
        status = ws.cli("status", "--json")
        alive_when_full = daemon.proc is not None and daemon.proc.poll() is None
        filler.unlink()
        time.sleep(2)
        alive_after = daemon.proc is not None and daemon.proc.poll() is None
    assert status.returncode == 0, status.stderr[-2000:]
    data = json.loads(status.stdout)
    # The daemon cannot write its heartbeat: `status` sees it alive (its lock) on a full disk.
    assert data["pipeline"] == "degraded", data
    assert data["pipeline_detail"].startswith("disk: full ("), data
    assert f"cannot write {ws.state_db.name}; nothing new starts" in data["pipeline_detail"], data
    assert alive_when_full and alive_after, ws.root.joinpath("daemon.out").read_text()[-3000:]
    daemon.terminate()
    assert run_until_idle(daemon, timeout=180) == 0
    assert ws.cli("stop", "--all").returncode == 0
    assert inv.db_invariants(ws) == {}
    assert inv.orphans(ws) == []
    charged = inv.safe_read(ws, "SELECT COUNT(*) FROM events WHERE message LIKE '%No space%'")
    assert charged[0][0] == 0, "attempts failing on ENOSPC were charged to their trials"
    assert "--- Logging error ---" not in ws.root.joinpath("daemon.out").read_text()
