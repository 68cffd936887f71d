"""Read-only queries for health, metrics and the HTTP API, and a read-only connection.

Plain functions over a Store so the Store class (shared with other work) stays as it is. Every
count here comes from the state DB, so counters survive a daemon restart.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

from pipeline_v2.models import DeploymentStatus, StageStatus
from pipeline_v2.store import Store
from pipeline_v2.store.base import loads
from pipeline_v2.store.trials import to_trial

# A stage leaving `running` for one of these is an attempt with that outcome.
_OUTCOMES = {
    StageStatus.PASSED.value: "passed",
    StageStatus.REJECTED.value: "rejected",
    StageStatus.FAILED.value: "failed",
    StageStatus.PENDING.value: "error",  # an error to retry, or an interrupted attempt
    StageStatus.CANCELLED.value: "cancelled",
}
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


def open_readonly(path: Path) -> Store:
    """A Store on a `mode=ro` connection: it can read everything and write nothing."""
    store = Store.__new__(Store)  # skip __init__: it migrates, which needs a writer
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0,
                           isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA query_only = ON")
    store.path, store.notify_kinds, store.conn = path, frozenset(), conn  # `db` derives from conn
    return store


def _all(store: Store, sql: str, params: list[Any] | None = None) -> list[sqlite3.Row]:
    return store.conn.execute(sql, params or []).fetchall()


def trials_page(store: Store, status: str | None, limit: int, offset: int) -> dict[str, Any]:
    """One page of trials in discovery order, with the total for paging."""
    where, params = ("WHERE status = ?", [status]) if status else ("", [])
    total = store.count_trials(status)
    rows = _all(store, f"SELECT * FROM trials {where} ORDER BY id LIMIT ? OFFSET ?",
                [*params, limit, offset])
    return {"total": total, "limit": limit, "offset": offset,
            "trials": [to_trial(r) for r in rows]}


def attempt_outcomes(store: Store) -> dict[tuple[str, str], int]:
    """Finished attempts by (stage, outcome), from the audit trail's trigger-kept counts."""
    rows = _all(store, "SELECT stage, new_status, SUM(n) FROM event_counts WHERE kind LIKE"
                       " 'stage.%' AND old_status = 'running' AND n > 0 GROUP BY 1, 2")
    return {(r[0] or None, _OUTCOMES.get(r[1], r[1])): r[2] for r in rows}


def stage_durations(store: Store) -> dict[str, tuple[list[int], float, int]]:
    """Per stage: cumulative bucket counts (DURATION_BUCKETS + Inf), sum and count of runs,
    from the trigger-kept histogram (one row per stage and bucket)."""
    found: dict[str, tuple[list[int], float, int]] = {}
    rows = _all(store, "SELECT stage_name, le, n, total FROM stage_durations WHERE n > 0"
                       " ORDER BY stage_name, le")
    for row in rows:
        cumulative, total, count = found.get(row[0], ([0] * (len(DURATION_BUCKETS) + 1), 0.0, 0))
        for i, bound in enumerate((*DURATION_BUCKETS, math.inf)):
            if row[1] <= bound:
                cumulative[i] += row[2]
        found[row[0]] = (cumulative, total + row[3], count + row[2])
    return found


def event_counts(store: Store, kind: str) -> dict[str | None, int]:
    """How many events of this kind, by stage (None: events of no stage)."""
    rows = _all(store, "SELECT stage, SUM(n) FROM event_counts WHERE kind = ? AND n > 0"
                       " GROUP BY 1", [kind])
    return {r[0] or None: r[1] for r in rows}


def deployment_facts(store: Store) -> list[dict[str, Any]]:
    """The newest deployment of each trial, with what health and metrics need."""
    rows = _all(store, "SELECT d.id, d.status, d.restarts, d.last_heartbeat, d.metrics,"
                       " d.reason, t.study, t.trial_number,"
                       # Only a fatal deployment can be a crash loop: no events read for others.
                       " CASE WHEN d.status = 'fatal' THEN (SELECT COUNT(*) FROM events e"
                       " WHERE e.trial_id = d.trial_id AND e.kind = 'deployment.crash_loop'"
                       " AND e.ts >= COALESCE(d.spawned_at, d.updated_at)) ELSE 0 END AS loops"
                       " FROM deployments d JOIN trials t ON t.id = d.trial_id"
                       " WHERE d.id IN (SELECT MAX(id) FROM deployments GROUP BY trial_id)"
                       " ORDER BY d.id")
    return [{"id": r["id"], "trial": f"{r['study']}:{r['trial_number']}", "status": r["status"],
             "restarts": r["restarts"], "last_heartbeat": r["last_heartbeat"],
             "metrics": loads(r["metrics"]) or {},
             "crash_loop": r["status"] == DeploymentStatus.FATAL.value and r["loops"] > 0}
            for r in rows]


def deployment_counts(store: Store) -> dict[str, int]:
    """Deployment rows by status."""
    return {r[0]: r[1] for r in _all(store, "SELECT status, COUNT(*) FROM deployments GROUP BY 1")}


def restarts_total(store: Store) -> int:
    """Trader restarts over every deployment ever made."""
    return int(_all(store, "SELECT COALESCE(SUM(restarts), 0) FROM deployments")[0][0])


def oldest_running_start(store: Store) -> float | None:
    """When the longest-running attempt started."""
    return _all(store, "SELECT MIN(started_at) FROM stages WHERE status = 'running'")[0][0]


def outbox_state(store: Store) -> tuple[int, int, str | None]:
    """Notifications waiting, given up, and the newest delivery error: read through the
    outbox's status index, never the delivered rows (which only grow)."""
    row = _all(store, "SELECT (SELECT COUNT(*) FROM outbox WHERE status = 'pending'),"
                      " (SELECT COUNT(*) FROM outbox WHERE status = 'failed'),"
                      " (SELECT last_error FROM outbox WHERE status IN ('pending', 'failed')"
                      " AND last_error IS NOT NULL ORDER BY id DESC LIMIT 1)")[0]
    return int(row[0] or 0), int(row[1] or 0), row[2]


def trials_total(store: Store) -> int:
    """Every trial ever discovered (or imported): the `new trials` counter."""
    return store.count_trials()


def state_db_ok(store: Store) -> str | None:
    """None when the DB answers a read, else the error."""
    try:
        store.conn.execute("SELECT COUNT(*) FROM settings").fetchone()
    except sqlite3.Error as exc:
        return str(exc)
    return None
