"""Read-only queries behind the reports and the study's PBO (kept light: no results blobs
unless asked for)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline_v2.store.base import BaseStore, loads


class ReportsMixin(BaseStore):
    """Aggregates for `pipeline report` and the `study.` gate namespace."""

    def stage_rows(self) -> list[dict[str, Any]]:
        """Every stage row's name, status, attempts, times and reason with its trial's study."""
        rows = self._all(
            "SELECT s.trial_id, t.study, s.stage_name, s.position, s.status, s.attempts,"
            " s.started_at, s.finished_at, s.reason FROM stages s JOIN trials t"
            " ON t.id = s.trial_id ORDER BY s.trial_id, s.position"
        )
        return [dict(row) for row in rows]

    def event_times(self, kinds: Sequence[str]) -> list[tuple[float, str]]:
        """(ts, kind) of every event of these kinds, oldest first."""
        rows = self._all(
            f"SELECT ts, kind FROM events WHERE kind IN ({', '.join('?' * len(kinds))})"
            " ORDER BY id", list(kinds))
        return [(float(r[0]), str(r[1])) for r in rows]

    def attempt_spans(self) -> list[tuple[str, float, str]]:
        """(stage, seconds, how it ended) of every attempt the events table recorded: from a
        `stage.running` event to the same stage's next event (passed, rejected, failed, or
        pending again after an error)."""
        rows = self._all(
            "SELECT stage, kind, ts, next_kind, next_ts FROM (SELECT stage, kind, ts,"
            " LEAD(kind) OVER w AS next_kind, LEAD(ts) OVER w AS next_ts FROM events"
            " WHERE stage IS NOT NULL AND kind LIKE 'stage.%'"
            " WINDOW w AS (PARTITION BY trial_id, stage ORDER BY id))"
            " WHERE kind = 'stage.running' AND next_kind IS NOT NULL")
        return [(str(r[0]), float(r[4]) - float(r[2]), str(r[3]).removeprefix("stage."))
                for r in rows]

    def deployed_trial_count(self) -> int:
        """How many trials were ever deployed."""
        row = self._one("SELECT COUNT(DISTINCT trial_id) FROM deployments")
        return int(row[0]) if row else 0

    def studies(self) -> list[str]:
        """The studies that have trials, by name."""
        return [str(r[0]) for r in self._all("SELECT DISTINCT study FROM trials ORDER BY 1")]

    def study_fingerprint(self, study: str) -> tuple[Any, ...]:
        """Changes whenever a stage of this study's trials finishes: the PBO cache key."""
        row = self._one(
            "SELECT COUNT(*), MAX(s.finished_at) FROM stages s JOIN trials t ON t.id = s.trial_id"
            " WHERE t.study = ? AND s.finished_at IS NOT NULL", [study])
        return tuple(row) if row else ()

    def study_series(self, study: str) -> list[dict[str, Any]]:
        """The return-series files the study's trials' stages left (passed or rejected)."""
        # Parsed here, not with json_extract: results may hold Infinity, which SQLite refuses.
        rows = self._all(
            "SELECT s.trial_id, t.trial_number, s.stage_name, s.results FROM stages s"
            " JOIN trials t ON t.id = s.trial_id WHERE t.study = ?"
            " AND s.results LIKE '%\"returns_file\"%' ORDER BY s.trial_id", [study])
        found = []
        for row in rows:
            path = (loads(row["results"]) or {}).get("returns_file")
            if isinstance(path, str):
                found.append({"trial_id": row["trial_id"], "trial_number": row["trial_number"],
                              "stage_name": row["stage_name"], "path": path})
        return found
