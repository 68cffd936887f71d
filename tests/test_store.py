"""The state DB: the transition table, claims, migrations, and refusing foreign files."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest
from sqlite_utils import Database

from pipeline_v2 import schema
from pipeline_v2.errors import TransitionError
from pipeline_v2.models import (
    TRANSITIONS,
    DeploymentStatus,
    StageStatus,
    TrialStatus,
    is_allowed,
)
from pipeline_v2.store import Store

NOW = 1_700_000_000.0
STAGES = [("backtest", StageStatus.PENDING), ("deploy", StageStatus.PENDING)]


def add(store: Store, number: int, study: str = "s") -> int:
    with store.transaction():
        trial_id = store.add_trial({"study": study, "number": number}, STAGES, 0, NOW)
    assert trial_id is not None
    return trial_id


def test_schema_has_seed_tables_wal_and_busy_timeout(tmp_path: Path) -> None:
    store = Store(tmp_path / "p.db")
    tables = set(store.db.table_names())
    assert {"trials", "stages", "deployments", "health", "events", "outbox", "cursors"} <= tables
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_trials_are_unique_per_study_and_number(tmp_path: Path) -> None:
    store = Store(tmp_path / "p.db")
    add(store, 1, "a")
    add(store, 1, "b")
    with store.transaction():
        assert store.add_trial({"study": "a", "number": 1}, STAGES, 0, NOW) is None
    assert [t.ref for t in store.list_trials()] == ["a:1", "b:1"]


@pytest.mark.parametrize("enum", [TrialStatus, StageStatus, DeploymentStatus])
def test_every_transition_outside_the_table_is_refused(tmp_path: Path, enum) -> None:
    store = Store(tmp_path / "p.db")
    table = {TrialStatus: "trials", StageStatus: "stages", DeploymentStatus: "deployments"}[enum]
    trial_id = add(store, 1)
    if enum is DeploymentStatus:
        store.db.execute(
            "INSERT INTO deployments (trial_id, status, run_dir, updated_at) VALUES (?, ?, ?, ?)",
            [trial_id, "starting", "/tmp/x", NOW],
        )
    row_id = store.db.execute(f"SELECT id FROM {table} LIMIT 1").fetchone()[0]
    refused = allowed = 0
    for old, new in itertools.product(enum, enum):
        if old == new:
            continue
        store.db.execute(f"UPDATE {table} SET status = ? WHERE id = ?", [old.value, row_id])
        if is_allowed(old, new):
            with store.transaction():
                store._transition(table, row_id, old, new, NOW)
            allowed += 1
        else:
            with pytest.raises(TransitionError, match="is not allowed"):
                store._transition(table, row_id, old, new, NOW)
            refused += 1
        current = store.db.execute(f"SELECT status FROM {table} WHERE id = ?", [row_id])
        assert current.fetchone()[0] == (new if is_allowed(old, new) else old).value
    assert allowed == sum(len(v) for v in TRANSITIONS[enum].values())
    assert refused > 0


def test_a_transition_from_a_stale_status_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "p.db")
    trial = store.get_trial(add(store, 1))
    store.db.execute("UPDATE trials SET status = 'cancelled' WHERE id = ?", [trial.id])
    with pytest.raises(TransitionError, match="changed underneath"):
        store._transition("trials", trial.id, TrialStatus.PENDING, TrialStatus.PROCESSING, NOW)


def test_a_claim_counts_once(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    first, second = Store(path), Store(path)
    trial_id = add(first, 1)
    stage = first.stages_of(trial_id)[0]
    assert first.claim_attempt(stage.id, NOW) is not None
    assert second.claim_attempt(stage.id, NOW) is None
    assert first.get_stage(stage.id).attempts == 1
    assert first.get_trial(trial_id).status == TrialStatus.PROCESSING


def test_migrations_upgrade_an_existing_db_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = Database(path)
    schema.migration_set().apply(db, stop_before="m003_deployments")
    db.execute(
        "INSERT INTO trials (study, trial_number, status, created_at, updated_at)"
        " VALUES ('s', 7, 'pending', 1, 1)"
    )
    db.conn.close()
    store = Store(path)
    assert "deployments" in store.db.table_names()
    assert [t.ref for t in store.list_trials()] == ["s:7"]
    applied = [m.name for m in schema.migration_set().applied(store.db)]
    assert applied == schema.known_migrations()


def test_a_stopping_deployment_keeps_its_kill_deadline_across_the_kill_at_migration(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    db = Database(path)
    schema.migration_set().apply(db, stop_before="m004_deployments_kill_at")
    db.execute(
        "INSERT INTO trials (study, trial_number, status, created_at, updated_at)"
        " VALUES ('s', 7, 'deployed', 1, 1)"
    )
    for status, due in (("stopping", 42.0), ("backoff", 43.0)):
        db.execute(
            "INSERT INTO deployments (trial_id, status, run_dir, next_start_at, updated_at)"
            " VALUES (1, ?, 'r', ?, 1)", [status, due]
        )
    db.conn.commit()
    db.conn.close()
    store = Store(path)
    stopping, backoff = (store.get_deployment(i) for i in (1, 2))
    assert (stopping.kill_at, stopping.next_start_at) == (42.0, None)
    assert (backoff.kill_at, backoff.next_start_at) == (None, 43.0)


def test_reopening_applies_nothing_twice(tmp_path: Path) -> None:
    Store(tmp_path / "p.db").close()
    store = Store(tmp_path / "p.db")
    assert len(schema.migration_set().applied(store.db)) == len(schema.known_migrations())


def test_not_sqlite_is_refused_and_left_alone(invoke, tmp_path: Path) -> None:
    (tmp_path / "stages.json").write_text("{}")
    (tmp_path / "pipeline_v2.db").write_text("my precious notes\n")
    result = invoke("status")
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {tmp_path / 'pipeline_v2.db'}: not an SQLite database; refusing to touch it "
        "(point state_db at a new file)\n"
    )
    assert (tmp_path / "pipeline_v2.db").read_text() == "my precious notes\n"


def test_newer_schema_is_refused(invoke, tmp_path: Path) -> None:
    (tmp_path / "stages.json").write_text("{}")
    Store(tmp_path / "pipeline_v2.db").close()
    conn = sqlite3.connect(tmp_path / "pipeline_v2.db")
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
        " VALUES ('pipeline_v2', 'm999_from_the_future', 'x')"
    )
    conn.commit()
    conn.close()
    before = (tmp_path / "pipeline_v2.db").read_bytes()
    result = invoke("status")
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {tmp_path / 'pipeline_v2.db'}: written by a newer pipeline_v2 (schema "
        f"'m999_from_the_future', this version knows up to '{schema.known_migrations()[-1]}'); "
        "upgrade pipeline_v2 to use it\n"
    )
    assert (tmp_path / "pipeline_v2.db").read_bytes() == before


def test_processes_opening_a_new_db_at_once_all_succeed(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = "import sys; from pipeline_v2.store import Store; Store(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "new.db")],
                              stderr=subprocess.PIPE) for _ in range(6)]
    errors = [p.communicate()[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    store = Store(tmp_path / "new.db")
    assert len(schema.migration_set().applied(store.db)) == len(schema.known_migrations())


def test_a_refused_transition_names_the_trial_never_an_internal_id(tmp_path: Path) -> None:
    store = Store(tmp_path / "p.db")
    for number in range(3):  # row ids and trial numbers differ
        store.add_trial({"study": "s", "number": number + 5},
                        [("backtest", StageStatus.PENDING)], 0, 1.0)
    trial = store.find_trial("6")
    refused = r"^trial s:6: pending -> validated is not"
    with pytest.raises(TransitionError, match=refused), store.transaction():
        store.set_trial_status(trial, TrialStatus.VALIDATED, 2.0)
    stage = store.stages_of(trial.id)[0]
    refused = r"^trial s:6 stage backtest: pending -> passed"
    with pytest.raises(TransitionError, match=refused), store.transaction():
        store.set_stage_status(stage, StageStatus.PASSED, 2.0)


def test_a_page_of_trials_goes_in_at_once_each_as_add_trial_would(tmp_path: Path) -> None:
    """Discovery's batch insert: known trials skipped, the new ones with their stages, due time,
    event and (when notified) outbox entry, the ids returned in order."""
    store = Store(tmp_path / "p.db", notify_kinds={"trial.discovered"})
    first = add(store, 1)
    page = [{"study": "s", "number": n, "params": {"x": n}} for n in (1, 2, 3)]
    added = store.add_trials(page, STAGES, 0, NOW)
    assert added == [first + 1, first + 2]
    assert [(t.ref, t.params) for t in store.list_trials()] == [
        ("s:1", {}), ("s:2", {"x": 2}), ("s:3", {"x": 3})]
    assert [(s.trial_id, s.name, s.position, s.status) for t in added
            for s in store.stages_of(t)] == [
        (t, name, pos, StageStatus.PENDING) for t in added
        for pos, name in enumerate(("backtest", "deploy"))]
    rows = store.conn.execute(
        "SELECT e.trial_id, e.kind, e.new_status, e.message, t.due_at, o.next_attempt_at"
        " FROM events e JOIN trials t ON t.id = e.trial_id LEFT JOIN outbox o"
        " ON o.event_id = e.id ORDER BY e.id").fetchall()
    assert [tuple(r) for r in rows] == [
        (trial_id, "trial.discovered", "pending", f"s:{n}", 0.0, NOW)
        for trial_id, n in ((first, 1), (added[0], 2), (added[1], 3))]
    assert store.add_trials(page, STAGES, 0, NOW) == []  # all known: nothing written


def test_a_trial_that_passes_on_discovery_is_not_due(tmp_path: Path) -> None:
    store = Store(tmp_path / "p.db")
    stages = [("backtest", StageStatus.SKIPPED), ("deploy", StageStatus.PENDING)]
    [trial_id] = store.add_trials([{"study": "s", "number": 0}], stages, 1, NOW,
                                  TrialStatus.PASSED)
    row = store.conn.execute("SELECT status, stage_pos, due_at FROM trials WHERE id = ?",
                             [trial_id]).fetchone()
    assert tuple(row) == ("passed", 1, None)
    assert store.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
