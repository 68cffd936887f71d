"""Bad state DBs: a corrupt page, a directory, the Optuna DB itself. Every command that writes
must refuse with one line naming the file (exit 1 or 2, no traceback) before touching anything.

Commands that only read (`status`, `trials`) check the DB lightly, by design: a full page scan
(`PRAGMA quick_check`, O(DB size)) on every `status` would cost more than the answer. They
never write; they answer when the corrupt page is one they do not read, and refuse with the same
one line when they meet it (`corrupt_tables`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.chaos.harness import (
    TALLY,
    DaemonUnderFire,
    Workspace,
    build_workspace,
    run_until_idle,
    tear_down,
)

pytestmark = pytest.mark.chaos

READERS = ("status", "trials")
COMMANDS = [("status", "--json"), ("trials",), ("init",), ("discover",),
            ("run-daemon", "--once"), ("stop", "--all")]


def fingerprint(path: Path) -> str:
    """What the bad state DB is, byte for byte (a folder: its listing)."""
    if path.is_dir():
        return "dir:" + ",".join(sorted(p.name for p in path.iterdir()))
    files = [path, *(Path(f"{path}{s}") for s in ("-wal", "-shm", "-journal"))]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes() if file.exists() else b"<absent>")
    return digest.hexdigest()


@pytest.fixture(scope="module")
def good_state_db(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real state DB after a run to idle (built once for the module)."""
    ws = build_workspace(tmp_path_factory.mktemp("good"), trials=3, seed=41)
    try:
        assert run_until_idle(DaemonUnderFire(ws), timeout=120) == 0
    finally:
        tear_down(ws)
    return ws.state_db.read_bytes()


def corrupt_page(ws: Workspace, good: bytes) -> Path:
    """That state DB with its last page overwritten (the schema still reads: only a check of
    the pages finds it)."""
    data = bytearray(good)
    page = int.from_bytes(data[16:18], "big") or 65536
    data[-page:] = bytes([0xA5]) * page
    ws.state_db.write_bytes(bytes(data))
    return ws.state_db


def corrupt_tables(ws: Workspace, good: bytes) -> Path:
    """That state DB with the root page of every table overwritten (the schema, page 1, still
    reads): whatever a command reads, it meets a corrupt page."""
    import sqlite3

    ws.state_db.write_bytes(good)
    with sqlite3.connect(ws.state_db) as conn:
        roots = [r[0] for r in conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND rootpage > 1")]
    conn.close()
    data = bytearray(good)
    size = int.from_bytes(data[16:18], "big") or 65536
    for root in roots:
        data[(root - 1) * size:root * size] = bytes([0xA5]) * size
    ws.state_db.write_bytes(bytes(data))
    return ws.state_db


def directory(ws: Workspace, good: bytes) -> Path:
    """state_db names a folder."""
    ws.state_db.mkdir()
    return ws.state_db


def optuna_db(ws: Workspace, good: bytes) -> Path:
    """state_db names the Optuna storage itself."""
    raw = json.loads(ws.config.read_text())
    raw["state_db"] = str(ws.optuna_path)
    ws.config.write_text(json.dumps(raw))
    return ws.optuna_path


@pytest.fixture(params=[corrupt_page, corrupt_tables, directory, optuna_db],
                ids=lambda f: f.__name__)
def bad_db(request, make_workspace, good_state_db: bytes) -> tuple[Workspace, Path]:
    ws = make_workspace(trials=3, seed=41)
    TALLY.bad_state_dbs += 1
    return ws, request.param(ws, good_state_db)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_bad_state_db_is_refused(request, bad_db: tuple[Workspace, Path],
                                 command: tuple[str, ...]) -> None:
    ws, path = bad_db
    before = fingerprint(path)
    result = ws.cli(*command, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert fingerprint(path) == before, f"{' '.join(command)} wrote to the bad state DB"
    unread_page = request.node.callspec.params["bad_db"] is corrupt_page
    if unread_page and command[0] in READERS and result.returncode == 0:
        # A light check by design: the page it never reads does not stop a read-only answer.
        assert result.stderr == ""
        if "--json" in command:
            assert "pipeline" in json.loads(result.stdout)
        return
    assert result.returncode in (1, 2), (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and path.name in lines[0], result.stderr[-2000:]
