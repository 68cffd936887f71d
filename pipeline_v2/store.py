"""The only module that touches SQLite: connection, migrations, claims, transitions, queries.

Every state change is one short `BEGIN IMMEDIATE` transaction; a claim is a conditional UPDATE
whose rowcount is checked; a status change not in `models.TRANSITIONS` is refused.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from pipeline_v2 import schema
from pipeline_v2.errors import NotFoundError, StoreError, TransitionError
from pipeline_v2.models import (
    StageRun,
    StageStatus,
    Trial,
    TrialStatus,
    is_allowed,
)

SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DueAttempt:
    """A stage whose next attempt may start now."""

    stage_id: int
    trial_id: int
    stage: str
    attempts: int


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str, allow_nan=True)


def _loads(text: str | None, default: Any = None) -> Any:
    return default if text is None else json.loads(text)


def _trial(row: sqlite3.Row) -> Trial:
    return Trial(
        id=row["id"],
        study=row["study"],
        number=row["trial_number"],
        status=TrialStatus(row["status"]),
        study_id=row["study_id"],
        generation=row["generation"],
        optuna_trial_id=row["optuna_trial_id"],
        value=row["value"],
        values=_loads(row["values"]),
        params=_loads(row["params"], {}),
        user_attrs=_loads(row["user_attrs"], {}),
        model_dir=row["model_dir"],
        flags=_loads(row["flags"], []),
        reason=row["reason"],
        paused_from=row["paused_from"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _stage(row: sqlite3.Row) -> StageRun:
    return StageRun(
        id=row["id"],
        trial_id=row["trial_id"],
        name=row["stage_name"],
        position=row["position"],
        status=StageStatus(row["status"]),
        attempts=row["attempts"],
        interruptions=row["interruptions"],
        next_attempt_at=row["next_attempt_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        results=_loads(row["results"]),
        error_message=row["error_message"],
        error_traceback=row["error_traceback"],
        reason=row["reason"],
    )


class Store:
    """The state DB. Open one per process; it is not shared across threads."""

    def __init__(self, path: Path | str, notify_kinds: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.notify_kinds = frozenset(notify_kinds)
        self._check_is_sqlite()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        self.db = Database(conn)
        try:
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{self.path}: cannot use the state DB: {exc}") from None

    def _check_is_sqlite(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb") as fh:
            if fh.read(16) != SQLITE_HEADER:
                raise StoreError(
                    f"{self.path}: not an SQLite database; refusing to touch it "
                    "(point state_db at a new file)"
                )

    def _migrate(self) -> None:
        known = schema.known_migrations()
        applied = [m.name for m in schema.migrations.applied(self.db)]
        newer = [name for name in applied if name not in known]
        if newer:
            raise StoreError(
                f"{self.path}: written by a newer pipeline_v2 (schema {newer[-1]!r}, this "
                f"version knows up to {known[-1]!r}); upgrade pipeline_v2 to use it"
            )
        schema.migrations.apply(self.db)

    def close(self) -> None:
        """Close the connection."""
        self.db.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, taken up front so it never fails half-way on a lock."""
        conn = self.db.conn
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        return self.db.conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Row | None:
        return self.db.conn.execute(sql, params).fetchone()

    # -----------------------------------------------------------------------------------------
    # Transitions and events

    def _transition(
        self, table: str, row_id: int, old: Enum, new: Enum, now: float, **sets: Any
    ) -> None:
        """Move one row from `old` to `new`; refuse anything not in the transition table."""
        if old == new and not sets:
            return
        if old != new and not is_allowed(old, new):
            raise TransitionError(f"{table} {row_id}: {old.value} -> {new.value} is not allowed")
        assignments = ", ".join(f"{column} = ?" for column in sets)
        sql = f"UPDATE {table} SET status = ?, updated_at = ?{', ' if sets else ''}{assignments}"
        cursor = self.db.conn.execute(
            f"{sql} WHERE id = ? AND status = ?",
            [new.value, now, *sets.values(), row_id, old.value],
        )
        if cursor.rowcount != 1:
            raise TransitionError(
                f"{table} {row_id}: expected status {old.value!r}, it changed underneath"
            )

    def add_event(
        self,
        kind: str,
        now: float,
        trial_id: int | None = None,
        stage: str | None = None,
        old: str | None = None,
        new: str | None = None,
        message: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> int:
        """Append to the audit trail; events named in `notify.events` also enter the outbox."""
        cursor = self.db.conn.execute(
            "INSERT INTO events (ts, trial_id, stage, kind, old_status, new_status, message, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [now, trial_id, stage, kind, old, new, message, _dumps(data)],
        )
        event_id = int(cursor.lastrowid or 0)
        if kind in self.notify_kinds:
            self.db.conn.execute(
                "INSERT INTO outbox (event_id, next_attempt_at) VALUES (?, ?)", [event_id, now]
            )
        return event_id

    def set_trial_status(
        self, trial: Trial, new: TrialStatus, now: float, reason: str | None = None, **sets: Any
    ) -> None:
        """Change a trial's status and record the event, in the caller's transaction."""
        if reason is not None:
            sets["reason"] = reason
        self._transition("trials", trial.id, trial.status, new, now, **sets)
        if new != trial.status:
            self.add_event(
                f"trial.{new.value}", now, trial.id, None, trial.status.value, new.value, reason
            )

    def set_stage_status(
        self,
        stage: StageRun,
        new: StageStatus,
        now: float,
        message: str | None = None,
        **sets: Any,
    ) -> None:
        """Change a stage's status and record the event, in the caller's transaction."""
        self._transition("stages", stage.id, stage.status, new, now, **sets)
        self.add_event(
            f"stage.{new.value}",
            now,
            stage.trial_id,
            stage.name,
            stage.status.value,
            new.value,
            message,
        )

    # -----------------------------------------------------------------------------------------
    # Trials

    def add_trial(
        self,
        fields: dict[str, Any],
        stages: Sequence[tuple[str, StageStatus]],
        stage_pos: int,
        now: float,
    ) -> int | None:
        """Insert a discovered trial and its stage rows; None if it was already known."""
        row = {
            "study": fields["study"],
            "study_id": fields.get("study_id", 0),
            "generation": fields.get("generation", 0),
            "trial_number": fields["number"],
            "optuna_trial_id": fields.get("trial_id"),
            "status": TrialStatus.PENDING.value,
            "stage_pos": stage_pos,
            "value": fields.get("value"),
            "values": _dumps(fields.get("values")),
            "params": _dumps(fields.get("params") or {}),
            "user_attrs": _dumps(fields.get("user_attrs") or {}),
            "constraints": _dumps(fields.get("constraints")),
            "datetime_complete": fields.get("datetime_complete"),
            "model_dir": fields.get("model_dir", ""),
            "flags": _dumps(fields.get("flags", [])),
            "created_at": now,
            "updated_at": now,
        }
        columns = ", ".join(f'"{c}"' for c in row)
        cursor = self.db.conn.execute(
            f"INSERT OR IGNORE INTO trials ({columns}) VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )
        if cursor.rowcount != 1:
            return None
        trial_id = int(cursor.lastrowid or 0)
        self.db.conn.executemany(
            "INSERT INTO stages (trial_id, stage_name, position, status, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(trial_id, name, pos, status.value, now) for pos, (name, status) in enumerate(stages)],
        )
        self.add_event(
            "trial.discovered",
            now,
            trial_id,
            None,
            None,
            "pending",
            f"{fields['study']}:{fields['number']}",
        )
        return trial_id

    def known_numbers(self, study: str, generation: int, numbers: Sequence[int]) -> set[int]:
        """Which of these trial numbers of this study generation are already recorded."""
        known: set[int] = set()
        for start in range(0, len(numbers), 500):
            chunk = list(numbers[start : start + 500])
            rows = self._all(
                "SELECT trial_number FROM trials WHERE study = ? AND generation = ?"
                f" AND trial_number IN ({', '.join('?' * len(chunk))})",
                [study, generation, *chunk],
            )
            known.update(row[0] for row in rows)
        return known

    def get_trial(self, trial_id: int) -> Trial:
        """The trial with this row id."""
        row = self._one("SELECT * FROM trials WHERE id = ?", [trial_id])
        if row is None:
            raise NotFoundError(f"no trial with id {trial_id}")
        return _trial(row)

    def find_trial(self, ref: str) -> Trial:
        """Resolve `NUMBER` or `STUDY:NUMBER`; the newest study generation wins."""
        study, _, number_text = ref.rpartition(":")
        if not number_text.lstrip("-").isdigit():
            raise NotFoundError(
                f'trial "{ref}": expected a trial number or study:number, '
                'e.g. "12" or "my_study:12"'
            )
        sql = "SELECT * FROM trials WHERE trial_number = ?"
        params: list[Any] = [int(number_text)]
        if study:
            sql += " AND study = ?"
            params.append(study)
        rows = self._all(sql + " ORDER BY study, generation DESC", params)
        studies = {row["study"] for row in rows}
        if len(studies) > 1:
            refs = ", ".join(sorted(f"{s}:{number_text}" for s in studies))
            raise NotFoundError(f'trial "{ref}" is ambiguous: use one of {refs}')
        if not rows:
            raise NotFoundError(f'no trial "{ref}"; {self._known_trials_hint()}')
        return _trial(rows[0])

    def _known_trials_hint(self) -> str:
        rows = self._all(
            "SELECT study, MIN(trial_number) lo, MAX(trial_number) hi, COUNT(*) n FROM trials"
            " GROUP BY study ORDER BY study"
        )
        if not rows:
            return 'the state DB has no trials yet (run "pipeline discover")'
        known = "; ".join(f"{r['study']}: {r['n']} trials, {r['lo']}..{r['hi']}" for r in rows)
        return f"known: {known}"

    def list_trials(self, status: str | None = None, limit: int | None = None) -> list[Trial]:
        """Trials in discovery order, optionally of one status."""
        sql, params = "SELECT * FROM trials", []
        if status:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_trial(row) for row in self._all(sql, params)]

    def stages_of(self, trial_id: int) -> list[StageRun]:
        """A trial's stages in configured order."""
        rows = self._all("SELECT * FROM stages WHERE trial_id = ? ORDER BY position", [trial_id])
        return [_stage(row) for row in rows]

    def get_stage(self, stage_id: int) -> StageRun:
        """The stage row with this id."""
        row = self._one("SELECT * FROM stages WHERE id = ?", [stage_id])
        if row is None:
            raise NotFoundError(f"no stage with id {stage_id}")
        return _stage(row)

    def events_of(self, trial_id: int) -> list[dict[str, Any]]:
        """A trial's audit trail, oldest first."""
        rows = self._all("SELECT * FROM events WHERE trial_id = ? ORDER BY id", [trial_id])
        return [dict(row) | {"data": _loads(row["data"])} for row in rows]

    def stage_results(self, trial_id: int) -> dict[str, dict[str, Any]]:
        """Metrics of the trial's passed stages, by stage name."""
        rows = self._all(
            "SELECT stage_name, results FROM stages WHERE trial_id = ? AND status = 'passed'",
            [trial_id],
        )
        return {row["stage_name"]: _loads(row["results"], {}) for row in rows}

    # -----------------------------------------------------------------------------------------
    # Stage attempts

    def due_attempts(self, now: float, limit: int) -> list[DueAttempt]:
        """Current stages of live trials that may start now, oldest due first."""
        if limit <= 0:
            return []
        rows = self._all(
            "SELECT s.id, s.trial_id, s.stage_name, s.attempts FROM trials t"
            " JOIN stages s ON s.trial_id = t.id AND s.position = t.stage_pos"
            " WHERE t.status IN ('pending', 'processing') AND s.status = 'pending'"
            " AND COALESCE(s.next_attempt_at, 0) <= ?"
            " ORDER BY COALESCE(s.next_attempt_at, 0), t.id LIMIT ?",
            [now, limit],
        )
        return [DueAttempt(r["id"], r["trial_id"], r["stage_name"], r["attempts"]) for r in rows]

    def next_attempt_time(self) -> float | None:
        """The earliest scheduled retry of a live trial, if any."""
        row = self._one(
            "SELECT MIN(s.next_attempt_at) FROM trials t"
            " JOIN stages s ON s.trial_id = t.id AND s.position = t.stage_pos"
            " WHERE t.status IN ('pending', 'processing') AND s.status = 'pending'"
        )
        return row[0] if row else None

    def running_stages(self) -> list[StageRun]:
        """Stages whose attempt is under way (or was, when a daemon died)."""
        return [_stage(r) for r in self._all("SELECT * FROM stages WHERE status = 'running'")]

    def waiting_work(self) -> int:
        """Stages of live trials still to run: pending (due or scheduled) or running."""
        row = self._one(
            "SELECT COUNT(*) FROM trials t"
            " JOIN stages s ON s.trial_id = t.id AND s.position = t.stage_pos"
            " WHERE t.status IN ('pending', 'processing') AND s.status IN ('pending', 'running')"
        )
        return int(row[0]) if row else 0

    def claim_attempt(self, stage_id: int, now: float) -> StageRun | None:
        """pending -> running, counting the attempt; None if someone else moved it first."""
        with self.transaction():
            cursor = self.db.conn.execute(
                "UPDATE stages SET status = 'running', attempts = attempts + 1, started_at = ?,"
                " finished_at = NULL, updated_at = ? WHERE id = ? AND status = 'pending'",
                [now, now, stage_id],
            )
            if cursor.rowcount != 1:
                return None
            stage = self.get_stage(stage_id)
            trial = self.get_trial(stage.trial_id)
            if trial.status == TrialStatus.PENDING:
                self.set_trial_status(trial, TrialStatus.PROCESSING, now)
            elif trial.status not in (TrialStatus.PROCESSING,):
                raise TransitionError(f"trial {trial.ref} is {trial.status.value}; not started")
            self.add_event(
                "stage.running",
                now,
                stage.trial_id,
                stage.name,
                "pending",
                "running",
                f"attempt {stage.attempts}",
            )
            return stage

    def apply_stage_update(self, update: Any, now: float) -> None:
        """Record a decided stage outcome (a `plan.StageUpdate`) and its trial's next step."""
        with self.transaction():
            stage = self.get_stage(update.stage_id)
            sets: dict[str, Any] = {
                "next_attempt_at": update.next_attempt_at,
                "interruptions": update.interruptions,
            }
            if update.status != StageStatus.PENDING:
                sets["finished_at"] = now
            for column in ("results", "error_message", "error_traceback", "reason"):
                value = getattr(update, column)
                if value is not None:
                    sets[column] = _dumps(value) if column == "results" else value
            if update.attempts is not None:
                sets["attempts"] = update.attempts
            self.set_stage_status(stage, update.status, now, update.message, **sets)
            for later in self.stages_of(stage.trial_id):
                if later.name in update.skip:
                    self.set_stage_status(later, StageStatus.SKIPPED, now, "disabled")
            trial = self.get_trial(stage.trial_id)
            sets = {"stage_pos": update.stage_pos}
            if update.trial_status is None or update.trial_status == trial.status:
                self.db.conn.execute(
                    "UPDATE trials SET stage_pos = ?, updated_at = ? WHERE id = ?",
                    [update.stage_pos, now, trial.id],
                )
            elif trial.status == TrialStatus.PAUSED:
                # Paused mid-attempt: resume will land on the outcome, not the old status.
                self.db.conn.execute(
                    "UPDATE trials SET stage_pos = ?, paused_from = ?, updated_at = ? WHERE id = ?",
                    [update.stage_pos, update.trial_status.value, now, trial.id],
                )
            else:
                self.set_trial_status(trial, update.trial_status, now, update.trial_reason, **sets)

    # -----------------------------------------------------------------------------------------
    # Control commands (the daemon need not run)

    def reset_stages(
        self,
        trial: Trial,
        stages: Sequence[StageRun],
        stage_pos: int,
        new: TrialStatus,
        now: float,
        why: str,
    ) -> None:
        """Put stages back to pending with attempts reset, and the trial back in processing."""
        with self.transaction():
            for stage in stages:
                self.set_stage_status(
                    stage,
                    StageStatus.PENDING,
                    now,
                    why,
                    attempts=0,
                    interruptions=0,
                    next_attempt_at=None,
                    finished_at=None,
                )
            self.set_trial_status(trial, new, now, why, stage_pos=stage_pos)

    def skip_stage(
        self,
        trial: Trial,
        stage: StageRun,
        stage_pos: int,
        new: TrialStatus | None,
        now: float,
        also_skip: Sequence[str] = (),
    ) -> None:
        """Mark a stage skipped by hand (and disabled ones after it) and move the trial on."""
        with self.transaction():
            self.set_stage_status(stage, StageStatus.SKIPPED, now, "skipped by hand")
            for later in self.stages_of(trial.id):
                if later.name in also_skip and later.status == StageStatus.PENDING:
                    self.set_stage_status(later, StageStatus.SKIPPED, now, "disabled")
            if new is not None and new != trial.status:
                self.set_trial_status(trial, new, now, f"{stage.name} skipped", stage_pos=stage_pos)
            else:
                self.db.conn.execute(
                    "UPDATE trials SET stage_pos = ?, updated_at = ? WHERE id = ?",
                    [stage_pos, now, trial.id],
                )

    def pause_trial(self, trial: Trial, now: float) -> None:
        """Live trial -> paused, remembering where it was."""
        with self.transaction():
            self.set_trial_status(
                trial, TrialStatus.PAUSED, now, "paused", paused_from=trial.status.value
            )

    def resume_trial(self, trial: Trial, now: float) -> None:
        """Paused trial -> the status it was paused from."""
        back = TrialStatus(trial.paused_from or TrialStatus.PENDING.value)
        with self.transaction():
            self.set_trial_status(trial, back, now, "resumed", paused_from=None)

    def cancel_trial(self, trial: Trial, now: float) -> None:
        """Trial -> cancelled; its unfinished stages too."""
        with self.transaction():
            for stage in self.stages_of(trial.id):
                if stage.status in (StageStatus.PENDING, StageStatus.RUNNING):
                    self.set_stage_status(stage, StageStatus.CANCELLED, now, "cancelled")
            self.set_trial_status(trial, TrialStatus.CANCELLED, now, "cancelled by hand")

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        """A value from the settings table."""
        row = self._one("SELECT value FROM settings WHERE key = ?", [key])
        return default if row is None else row[0]

    def set_setting(self, key: str, value: str | None) -> None:
        """Store (or, with None, delete) a setting."""
        with self.transaction() as conn:
            if value is None:
                conn.execute("DELETE FROM settings WHERE key = ?", [key])
            else:
                conn.execute(
                    "INSERT INTO settings (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [key, value],
                )

    # -----------------------------------------------------------------------------------------
    # Discovery cursors

    def get_cursor(self, storage: str, study: str) -> dict[str, Any] | None:
        """A study's discovery cursor, or None before its first poll."""
        row = self._one("SELECT * FROM cursors WHERE storage = ? AND study = ?", [storage, study])
        return None if row is None else dict(row) | {"open_ids": json.loads(row["open_ids"])}

    def save_cursor(self, storage: str, study: str, cursor: dict[str, Any], now: float) -> None:
        """Persist a study's discovery cursor (inside the caller's transaction)."""
        self.db.conn.execute(
            "INSERT INTO cursors (storage, study, study_id, generation, fingerprint,"
            " max_trial_id, lag_trial_id, open_ids, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (storage, study) DO UPDATE SET"
            " study_id = excluded.study_id, generation = excluded.generation,"
            " fingerprint = excluded.fingerprint, max_trial_id = excluded.max_trial_id,"
            " lag_trial_id = excluded.lag_trial_id, open_ids = excluded.open_ids,"
            " updated_at = excluded.updated_at",
            [
                storage,
                study,
                cursor["study_id"],
                cursor["generation"],
                cursor["fingerprint"],
                cursor["max_trial_id"],
                cursor["lag_trial_id"],
                json.dumps(sorted(set(cursor["open_ids"]))),
                now,
            ],
        )

    # -----------------------------------------------------------------------------------------
    # Health, status and notifications

    def set_health(
        self,
        component: str,
        status: str,
        message: str | None,
        now: float,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record a component's health (daemon, discovery, disk, ...)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO health (component, status, message, details, checked_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (component) DO UPDATE SET"
                " status = excluded.status, message = excluded.message,"
                " details = excluded.details, checked_at = excluded.checked_at",
                [component, status, message, _dumps(details), now],
            )

    def record_check(self, component: str, status: str, message: str, now: float, ok: bool) -> None:
        """A component's health and, when it succeeded, `last_check`: one transaction."""
        with self.transaction() as conn:
            self.set_health(component, status, message, now)
            if ok:
                conn.execute(
                    "INSERT INTO settings (key, value) VALUES ('last_check', ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [repr(now)],
                )

    def health(self) -> dict[str, dict[str, Any]]:
        """Every component's last health record."""
        rows = self._all("SELECT * FROM health ORDER BY component")
        return {r["component"]: dict(r) | {"details": _loads(r["details"])} for r in rows}

    def trial_counts(self) -> dict[str, int]:
        """Number of trials per status."""
        return {r[0]: r[1] for r in self._all("SELECT status, COUNT(*) FROM trials GROUP BY 1")}

    def stage_counts(self) -> dict[str, dict[str, int]]:
        """Number of stage rows per stage name and status."""
        counts: dict[str, dict[str, int]] = {}
        for name, status, n in self._all(
            "SELECT stage_name, status, COUNT(*) FROM stages GROUP BY 1, 2"
        ):
            counts.setdefault(name, {})[status] = n
        return counts

    def due_notifications(self, now: float, limit: int = 20) -> list[dict[str, Any]]:
        """Outbox entries due for (re)delivery, with their event."""
        rows = self._all(
            "SELECT o.id, o.attempts, e.* FROM outbox o JOIN events e ON e.id = o.event_id"
            " WHERE o.status = 'pending' AND o.next_attempt_at <= ? ORDER BY o.id LIMIT ?",
            [now, limit],
        )
        return [dict(r) | {"outbox_id": r[0], "data": _loads(r["data"])} for r in rows]

    def next_notification_time(self) -> float | None:
        """When the next pending notification is due."""
        row = self._one("SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending'")
        return row[0] if row else None

    def mark_notification(
        self, outbox_id: int, now: float, error: str | None, retry_at: float | None
    ) -> None:
        """Record a delivery: done, to retry at `retry_at`, or given up (retry_at None)."""
        status = "delivered" if error is None else ("pending" if retry_at else "failed")
        with self.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET status = ?, attempts = attempts + 1, last_error = ?,"
                " next_attempt_at = COALESCE(?, next_attempt_at), delivered_at = ? WHERE id = ?",
                [status, error, retry_at, now if error is None else None, outbox_id],
            )

    def deployment_rows(self, live_only: bool = False) -> list[dict[str, Any]]:
        """Deployments with their trial's reference, newest first."""
        sql = (
            "SELECT d.*, t.study, t.trial_number FROM deployments d"
            " JOIN trials t ON t.id = d.trial_id"
        )
        if live_only:
            sql += " WHERE d.status NOT IN ('stopped', 'exited', 'fatal')"
        rows = self._all(sql + " ORDER BY d.id DESC")
        return [
            dict(r) | {"crash_times": _loads(r["crash_times"], []), "metrics": _loads(r["metrics"])}
            for r in rows
        ]

    def integrity_check(self) -> str:
        """`PRAGMA integrity_check`'s verdict ("ok" when healthy)."""
        return str(self._all("PRAGMA integrity_check")[0][0])
