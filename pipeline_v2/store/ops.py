"""Everything around the trials: settings, discovery cursors, health, status counts, outbox."""

from __future__ import annotations

import json
from typing import Any

from pipeline_v2.store.base import BaseStore, dumps, loads


class OpsMixin(BaseStore):
    """Settings, cursors, health records, counts and the notification outbox."""

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
        rows = self._all("SELECT * FROM health ORDER BY component")
        return {r["component"]: dict(r) | {"details": loads(r["details"])} for r in rows}

    def trial_counts(self) -> dict[str, int]:
        """Number of trials per status."""
        return {r[0]: r[1] for r in self._all("SELECT status, COUNT(*) FROM trials GROUP BY 1")}

    def stage_counts(self) -> dict[str, dict[str, int]]:
        """Number of stage rows per stage name and status."""
        counts: dict[str, dict[str, int]] = {}
        # A stage left pending behind a rejected, failed or cancelled trial will never run:
        # it is not work waiting, so it is not counted as pending.
        for name, status, n in self._all(
            "SELECT s.stage_name, s.status, COUNT(*) FROM stages s JOIN trials t"
            " ON t.id = s.trial_id WHERE NOT (s.status = 'pending'"
            " AND t.status IN ('rejected', 'failed', 'cancelled')) GROUP BY 1, 2"
        ):
            counts.setdefault(name, {})[status] = n
        return counts

    # -- notification outbox --------------------------------------------------------------------

    def due_notifications(self, now: float, limit: int = 20) -> list[dict[str, Any]]:
        """Outbox entries due for (re)delivery, with their event and trial."""
        rows = self._all(
            "SELECT o.id AS outbox_id, o.attempts, e.*, t.study, t.trial_number FROM outbox o"
            " JOIN events e ON e.id = o.event_id LEFT JOIN trials t ON t.id = e.trial_id"
            " WHERE o.status = 'pending' AND o.next_attempt_at <= ? ORDER BY o.id LIMIT ?",
            [now, limit],
        )
        return [dict(r) | {"data": loads(r["data"])} for r in rows]

    def next_notification_time(self) -> float | None:
        """When the next pending notification is due."""
        row = self._one("SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending'")
        return row[0] if row else None

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
