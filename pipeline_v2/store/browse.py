"""Read-only queries for the dashboard: a filtered, sorted page of trials and the overview's lists.

Every query is bounded (LIMIT) and walks an index (migrations m008, m009), so a page
costs about the same with 100 trials or 100,000.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipeline_v2.models import StageStatus
from pipeline_v2.store import Store
from pipeline_v2.store.base import loads
from pipeline_v2.store.ranking import CLEAN
from pipeline_v2.store.trials import to_trial

# Sort keys on the trials table itself (indexed); "stage.metric" sorts by a stage's result.
COLUMNS = {"id": "t.id", "number": "t.trial_number", "value": "t.value",
           "updated": "t.updated_at", "status": "t.status"}
_METRIC = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class TrialQuery:
    """What the trials page asks for: filters, a sort key and a page."""

    status: str | None = None
    study: str | None = None
    stage_pos: int | None = None
    sort: str = "id"
    desc: bool = False
    limit: int = 50
    offset: int = 0


def sort_key_ok(sort: str, stages: list[str]) -> bool:
    """A trials column, or "stage.metric" with a known stage and a plain metric name."""
    if sort in COLUMNS:
        return True
    stage, _, metric = sort.partition(".")
    return stage in stages and bool(_METRIC.fullmatch(metric))


def trials_browse(store: Store, query: TrialQuery) -> dict[str, Any]:
    """{"total", "trials": [Trial], "positions": {id: stage_pos}}; the caller checked the sort."""
    where, params = [], []
    for column, value in (("t.status", query.status), ("t.study", query.study),
                          ("t.stage_pos", query.stage_pos)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    if query.study is None and query.stage_pos is None:  # from the count table, O(1)
        total = store.count_trials(query.status)
    else:
        total = store.conn.execute(f"SELECT COUNT(*) FROM trials t {clause}",
                                   params).fetchone()[0]
    direction = "DESC" if query.desc else "ASC"
    if query.sort in COLUMNS:
        order, order_params = f"{COLUMNS[query.sort]} {direction}", []
    else:  # a metric: read from the stage's JSON, so this one scans (rare, and still bounded)
        stage, _, metric = query.sort.partition(".")
        # results may hold NaN / Infinity tokens SQLite's JSON parser refuses: read as promotion
        # does (NaN as null, last; Infinity as 1e999), never "malformed JSON"
        clean = CLEAN.replace("r.results", "s.results")
        order = (f"(SELECT CASE WHEN json_valid({clean}) THEN json_extract({clean}, '$.' || ?)"
                 f" END FROM stages s WHERE s.trial_id = t.id AND s.stage_name = ?) {direction}"
                 " NULLS LAST")
        order_params = [metric, stage]
    rows = store.conn.execute(
        f"SELECT t.* FROM trials t {clause} ORDER BY {order}, t.id {direction} LIMIT ? OFFSET ?",
        [*params, *order_params, query.limit, query.offset]).fetchall()
    return {"total": total, "trials": [to_trial(r) for r in rows],
            "positions": {r["id"]: r["stage_pos"] for r in rows}}


def stage_results(store: Store, trial_ids: list[int]) -> dict[int, dict[str, dict[str, Any]]]:
    """Per trial id, per stage name: its status and results (for the rows of one page)."""
    found: dict[int, dict[str, dict[str, Any]]] = {i: {} for i in trial_ids}
    if not trial_ids:
        return found
    marks = ", ".join("?" * len(trial_ids))
    for row in store.conn.execute(
            f"SELECT trial_id, stage_name, status, results FROM stages WHERE trial_id IN ({marks})"
            " ORDER BY position", trial_ids):
        found[row[0]][row[1]] = {"status": row[2], "results": loads(row[3], {}) or {}}
    return found


def studies(store: Store) -> list[str]:
    """Every study with trials: one index seek per study (a loose index scan), not one step
    per trial as `SELECT DISTINCT` would take."""
    return [r[0] for r in store.conn.execute(
        "WITH RECURSIVE found(study) AS (SELECT MIN(study) FROM trials UNION ALL"
        " SELECT (SELECT MIN(study) FROM trials WHERE study > found.study) FROM found"
        " WHERE found.study IS NOT NULL) SELECT study FROM found WHERE study IS NOT NULL")]


def running_attempts(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    """Stage attempts running now, oldest first."""
    rows = store.conn.execute(
        "SELECT t.study, t.trial_number, s.stage_name, s.attempts, s.started_at FROM stages s"
        " JOIN trials t ON t.id = s.trial_id WHERE s.status = ? ORDER BY s.started_at LIMIT ?",
        [StageStatus.RUNNING.value, limit]).fetchall()
    return [{"trial": f"{r[0]}:{r[1]}", "stage": r[2], "attempt": r[3], "started_at": r[4]}
            for r in rows]


def retry_queue(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    """Stages waiting for a retry after an error, soonest first, with the error."""
    rows = store.conn.execute(
        "SELECT t.study, t.trial_number, s.stage_name, s.attempts, s.next_attempt_at,"
        " s.error_message FROM stages s JOIN trials t ON t.id = s.trial_id"
        # `+s.status`: walk the small retry index in due order, never every pending stage
        # (the status index would read them all, then sort; the daemon runs no ANALYZE).
        " WHERE s.next_attempt_at IS NOT NULL AND +s.status = ? ORDER BY s.next_attempt_at"
        " LIMIT ?", [StageStatus.PENDING.value, limit]).fetchall()
    return [{"trial": f"{r[0]}:{r[1]}", "stage": r[2], "attempts": r[3], "due_at": r[4],
             "error": r[5]} for r in rows]


def recent_events(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """The newest events of the audit trail, newest first."""
    rows = store.conn.execute(
        "SELECT e.ts, e.kind, e.stage, e.message, t.study, t.trial_number FROM events e"
        " LEFT JOIN trials t ON t.id = e.trial_id ORDER BY e.id DESC LIMIT ?", [limit]).fetchall()
    return [{"ts": r[0], "kind": r[1], "stage": r[2], "message": r[3],
             "trial": f"{r[4]}:{r[5]}" if r[4] is not None else None} for r in rows]
