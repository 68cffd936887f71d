"""SQL for `pipeline import-v1`: read an earlier V2 state DB, write imported trials to ours."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from pipeline_v2.models import StageStatus, TrialStatus
from pipeline_v2.store import Store
from pipeline_v2.store.base import dumps

V2_TABLES = ("trials", "stages", "deployments", "health")


class LegacyFormatError(ValueError):
    """The file is not a state DB of the earlier V2 design."""


def read_v2_db(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Trials with their stages and deployments from an earlier V2 DB, and its health row count.

    Opened read-only: importing never changes the file it reads.
    """
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise LegacyFormatError(f"cannot open: {exc}") from None
    conn.row_factory = sqlite3.Row
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "_sqlite_migrations" in tables and "events" in tables:
            raise LegacyFormatError("this is a pipeline_v2 state DB already (nothing to import)")
        missing = [t for t in V2_TABLES if t not in tables]
        if missing:
            raise LegacyFormatError(f"not an earlier V2 state DB (missing tables: "
                                    f"{', '.join(missing)})")
        trials = [dict(r) for r in conn.execute("SELECT * FROM trials ORDER BY id")]
        stages: dict[Any, list[dict[str, Any]]] = {}
        for row in conn.execute("SELECT * FROM stages ORDER BY id"):
            stages.setdefault(row["trial_id"], []).append(dict(row))
        deployments: dict[Any, list[dict[str, Any]]] = {}
        for row in conn.execute("SELECT * FROM deployments ORDER BY id"):
            deployments.setdefault(row["trial_id"], []).append(dict(row))
        health_rows = conn.execute("SELECT COUNT(*) FROM health").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise LegacyFormatError(f"cannot read: {exc}") from None
    finally:
        conn.close()
    for trial in trials:
        trial["stages"] = stages.get(trial["id"], [])
        trial["deployments"] = deployments.get(trial["id"], [])
    return trials, int(health_rows)


def is_known(store: Store, study: str, number: int) -> bool:
    """Whether the state DB already has this trial (any generation)."""
    return store.conn.execute("SELECT 1 FROM trials WHERE study = ? AND trial_number = ?",
                              [study, number]).fetchone() is not None


def insert_imported(store: Store, fields: dict[str, Any],
                    stages: list[tuple[str, StageStatus, dict[str, Any]]], stage_pos: int,
                    status: TrialStatus, reason: str | None, paused_from: TrialStatus | None,
                    source: str, now: float) -> int | None:
    """One imported trial with its stage verdicts, in the caller's transaction; None if known."""
    trial_id = store.add_trial(fields, [(name, st) for name, st, _ in stages], stage_pos, now,
                               status)
    if trial_id is None:
        return None
    store.conn.execute("UPDATE trials SET reason = ?, paused_from = ? WHERE id = ?",
                       [reason, paused_from.value if paused_from else None, trial_id])
    for name, _status, extra in stages:
        if extra:
            store.conn.execute(
                "UPDATE stages SET attempts = ?, results = ?, error_message = ?, reason = ?,"
                " started_at = ?, finished_at = ? WHERE trial_id = ? AND stage_name = ?",
                [extra.get("attempts", 0), dumps(extra.get("results")), extra.get("error"),
                 extra.get("reason"), extra.get("started_at"), extra.get("finished_at"),
                 trial_id, name])
    store.add_event("trial.imported", now, trial_id, None, None, status.value, reason,
                    {"source": source})
    return trial_id


def dump(path: Path) -> list[str]:
    """Every statement of a DB (for tests and `--dry-run` checks)."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def loads_json(text: str | None) -> Any:
    """A JSON column of the old DB, or None when it is not JSON."""
    if not text:
        return None
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError):
        return None
