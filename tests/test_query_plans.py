"""Per-turn and status queries read through indexes (or the count tables); status and `trials`
stay bounded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_v2.models import StageStatus, TrialStatus
from pipeline_v2.status import snapshot
from pipeline_v2.store import Store, queries

BIG_TABLES = ("trials", "stages", "deployments", "events", "t", "s", "d", "e")
STAGES = [("backtest", StageStatus.PENDING), ("stress", StageStatus.PENDING),
          ("deploy", StageStatus.PENDING)]


def populated(path: Path, n: int = 300) -> Store:
    """A state DB with trials in several statuses, their stages and events (not ANALYZEd: the
    daemon never runs ANALYZE, so the planner works from the schema alone)."""
    store = Store(path)
    with store.transaction():
        for i in range(n):
            trial_id = store.add_trial({"study": "s", "number": i, "value": float(i)}, STAGES,
                                       0, 1.0)
            status = (TrialStatus.REJECTED, TrialStatus.PASSED, TrialStatus.PENDING)[i % 3]
            store.conn.execute("UPDATE trials SET status = ? WHERE id = ?",
                               [status.value, trial_id])
    return store


@pytest.mark.parametrize("name", sorted(queries.PER_TURN))
def test_per_turn_query_reads_through_an_index(tmp_path: Path, name: str) -> None:
    store = populated(tmp_path / "p.db")
    sql, params = queries.PER_TURN[name]
    plan = [row[3] for row in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    scans = [d for d in plan if d.split(" ")[0] == "SCAN" and d.split(" ")[1] in BIG_TABLES
             and "INDEX" not in d]
    assert scans == [], f"{name}: {plan}"


def test_status_counts_stages_in_a_fixed_number_of_queries(tmp_path: Path,
                                                         write_config) -> None:
    config = write_config({"optuna": {"storage": "sqlite:///o.db"}, "state_db": "p.db",
                           "stages": {name: {"run": "m:f"} for name in
                                      ("backtest", "stress", "a", "b", "c")}})
    store = populated(config.state_db_path, 30)
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    data = snapshot(store, config, 2.0)
    # The counts come from the trigger-kept count tables: no stage row is read at all.
    assert [sql for sql in seen if "FROM stages" in sql] == []
    # Pending stages behind rejected trials are not work waiting.
    assert data["stages"]["backtest"] == {"pending": 20}


def test_trials_are_read_in_pages_in_order(tmp_path: Path) -> None:
    store = populated(tmp_path / "p.db", 10)
    numbers = [t.number for t in store.iter_trials(batch=3)]
    assert numbers == list(range(10))
    assert [t.number for t in store.iter_trials("passed", batch=2)] == [1, 4, 7]
    assert [t.number for t in store.iter_trials(limit=4, offset=5, batch=3)] == [5, 6, 7, 8]
    assert [t.number for t in store.iter_trials("pending", offset=2, batch=1)] == [8]
    assert list(store.iter_trials(offset=10)) == []


def test_trials_json_is_an_array_and_jsonl_one_object_per_line(invoke, tmp_path: Path) -> None:
    (tmp_path / "stages.json").write_text(json.dumps(
        {"optuna": {"storage": "sqlite:///o.db"}, "state_db": "p.db"}))
    populated(tmp_path / "p.db", 5).close()
    result = invoke("trials", "--json")
    assert result.exit_code == 0, result.output
    assert [t["number"] for t in json.loads(result.output)] == [0, 1, 2, 3, 4]
    result = invoke("trials", "--jsonl", "--status", "passed")
    assert [json.loads(line)["number"] for line in result.output.splitlines()] == [1, 4]
    result = invoke("trials", "--json", "--limit", "2", "--offset", "1")
    assert [t["number"] for t in json.loads(result.output)] == [1, 2]
    assert json.loads(invoke("trials", "--json", "--status", "failed").output) == []


@pytest.mark.parametrize("read", ["retry_queue", "studies"])
def test_overview_lists_seek_their_index_never_walk_every_row(tmp_path: Path, read: str) -> None:
    """The retry queue walks the small retry index in due order (not every pending stage through
    the status index, then a sort); the study list seeks once per study (not SELECT DISTINCT
    over every trial's index entry). The state DB is not ANALYZEd, as the daemon leaves it."""
    from pipeline_v2.store import browse

    store = populated(tmp_path / "p.db")
    store.conn.execute("UPDATE stages SET next_attempt_at = 5.0 WHERE id % 50 = 0")
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    getattr(browse, read)(store)
    store.conn.set_trace_callback(None)
    assert seen
    for sql in seen:
        plan = [row[3] for row in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        walks = [d for d in plan if d.startswith(("SCAN trials", "SCAN stages", "SCAN s ",
                                                   "SCAN t ", "USE TEMP B-TREE"))]
        assert walks == [], f"{read}: {plan}"


def test_studies_lists_each_study_once_in_order(tmp_path: Path) -> None:
    from pipeline_v2.store import browse

    store = Store(tmp_path / "p.db")
    assert browse.studies(store) == []
    with store.transaction():
        for i, study in enumerate(["b", "a", "c", "a", "b", "a"]):
            store.add_trial({"study": study, "number": i}, STAGES, 0, 1.0)
    assert browse.studies(store) == ["a", "b", "c"]


def test_outbox_health_reads_only_undelivered_notifications(tmp_path: Path) -> None:
    """Delivered notifications only grow: the health check counts the others by index."""
    from pipeline_v2.store import observe

    store = Store(tmp_path / "p.db", notify_kinds=["k"])
    with store.transaction():
        for i in range(6):
            store.add_event("k", float(i))
    for outbox_id, error, retry_at in ((1, None, None), (2, "refused", 99.0),
                                       (3, "gone", None), (4, "late", 50.0)):
        store.mark_notification(outbox_id, 10.0, error, retry_at)
    store.mark_notification(4, 60.0, None, None)  # delivered at last: its error is history
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    assert observe.outbox_state(store) == (3, 1, "gone")
    store.conn.set_trace_callback(None)
    plan = [row[3] for sql in seen for row in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    assert [d for d in plan if d.startswith("SCAN outbox")] == [], plan
