"""Everything around the trials: settings, discovery cursors, health, status counts, outbox."""

from __future__ import annotations

import json
from typing import Any

from pipeline_v2.store import queries
from pipeline_v2.store.base import BaseStore, dumps, loads


class OpsMixin(BaseStore):
    """Settings, cursors, health records, counts and the notification outbox."""

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        """A value from the settings table."""
        row = self._one(queries.SETTING, [key])
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

    # -- discovery cursors ----------------------------------------------------------------------

    def get_cursor(self, storage: str, study: str) -> dict[str, Any] | None:
        """A study's discovery cursor, or None before its first poll."""
        row = self._one("SELECT * FROM cursors WHERE storage = ? AND study = ?", [storage, study])
        return None if row is None else dict(row) | {"open_ids": json.loads(row["open_ids"])}

    def save_cursor(self, storage: str, study: str, cursor: dict[str, Any], now: float) -> None:
        """Persist a study's discovery cursor (inside the caller's transaction)."""
        self.conn.execute(
            "INSERT INTO cursors (storage, study, study_id, generation, fingerprint,"
            " max_trial_id, lag_trial_id, open_ids, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (storage, study) DO UPDATE SET"
            " study_id = excluded.study_id, generation = excluded.generation,"
            " fingerprint = excluded.fingerprint, max_trial_id = excluded.max_trial_id,"
            " lag_trial_id = excluded.lag_trial_id, open_ids = excluded.open_ids,"
            " updated_at = excluded.updated_at",
            [storage, study, cursor["study_id"], cursor["generation"], cursor["fingerprint"],
             cursor["max_trial_id"], cursor["lag_trial_id"],
             json.dumps(sorted(set(cursor["open_ids"]))), now],
        )

    # -- health and status ----------------------------------------------------------------------

    def set_health(self, component: str, status: str, message: str | None, now: float,
                   details: dict[str, Any] | None = None) -> None:
        """Record a component's health (daemon, discovery, disk, ...)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO health (component, status, message, details, checked_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (component) DO UPDATE SET"
                " status = excluded.status, message = excluded.message,"
                " details = excluded.details, checked_at = excluded.checked_at",
                [component, status, message, dumps(details), now],
            )

    def record_check(self, component: str, status: str, message: str, now: float,
                     ok: bool) -> None:
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
        rows = self._all(queries.HEALTH)
        return {r["component"]: dict(r) | {"details": loads(r["details"])} for r in rows}

    def trial_counts(self) -> dict[str, int]:
        """Number of trials per status (from the trigger-kept count table)."""
        return {r[0]: r[1] for r in self._all(queries.TRIAL_COUNTS)}

    def count_trials(self, status: str | None = None) -> int:
        """How many trials (of this status), from the count table: no trial is read."""
        row = (self._one(queries.COUNT_TRIALS) if status is None
               else self._one(queries.COUNT_TRIALS_OF_STATUS, [status]))
        return int(row[0]) if row else 0

    def stage_counts(self) -> dict[str, dict[str, int]]:
        """Number of stage rows per stage name and status, leaving out the pending stages of
        rejected, failed or cancelled trials (they will never run)."""
        counts: dict[str, dict[str, int]] = {}
        for name, status, n in self._all(queries.STAGE_COUNTS):
            counts.setdefault(name, {})[status] = n
        return counts

    # -- notification outbox --------------------------------------------------------------------

    def due_notifications(self, now: float, limit: int = 20) -> list[dict[str, Any]]:
        """Outbox entries due for (re)delivery, with their event and trial."""
        rows = self._all(queries.DUE_NOTIFICATIONS, [now, limit])
        return [dict(r) | {"data": loads(r["data"])} for r in rows]

    def next_notification_time(self) -> float | None:
        """When the next pending notification is due."""
        row = self._one(queries.NEXT_NOTIFICATION_TIME)
        return row[0] if row else None

    def has_due_notifications(self, now: float) -> bool:
        """True while a notification is due (not merely waiting on a retry backoff)."""
        row = self._one("SELECT 1 FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?"
                        " LIMIT 1", [now])
        return row is not None

    def mark_notification(self, outbox_id: int, now: float, error: str | None,
                          retry_at: float | None) -> None:
        """Record a delivery: done, to retry at `retry_at`, or given up (retry_at None)."""
        status = "delivered" if error is None else ("pending" if retry_at else "failed")
        with self.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET status = ?, attempts = attempts + 1, last_error = ?,"
                " next_attempt_at = COALESCE(?, next_attempt_at), delivered_at = ? WHERE id = ?",
                [status, error, retry_at, now if error is None else None, outbox_id],
            )
