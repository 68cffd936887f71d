"""Trials and their stages: discovery inserts, lookups and the status changes both share.

`trials.due_at` is kept current by every change here: the time the trial's current stage may
start, or NULL when it has nothing to start. It makes "what is due" an index range read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from pipeline_v2.errors import NotFoundError
from pipeline_v2.models import StageRun, StageStatus, Trial, TrialStatus
from pipeline_v2.store import queries
from pipeline_v2.store.base import BaseStore, dumps, loads

LIVE = (TrialStatus.PENDING.value, TrialStatus.PROCESSING.value)
INSERT_TRIAL = (
    "INSERT OR IGNORE INTO trials (study, study_id, generation, trial_number, optuna_trial_id,"
    ' status, stage_pos, due_at, value, "values", params, user_attrs, constraints,'
    " datetime_complete, model_dir, flags, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def to_trial(row: sqlite3.Row) -> Trial:
    """A trials row as a Trial."""
    return Trial(
        id=row["id"], study=row["study"], number=row["trial_number"],
        status=TrialStatus(row["status"]), study_id=row["study_id"],
        generation=row["generation"], optuna_trial_id=row["optuna_trial_id"],
        value=row["value"], values=loads(row["values"]), params=loads(row["params"], {}),
        user_attrs=loads(row["user_attrs"], {}), model_dir=row["model_dir"],
        flags=loads(row["flags"], []), reason=row["reason"], paused_from=row["paused_from"],
        pinned=bool(row["pinned"]), created_at=row["created_at"], updated_at=row["updated_at"],
    )


def to_stage(row: sqlite3.Row) -> StageRun:
    """A stages row as a StageRun."""
    return StageRun(
        id=row["id"], trial_id=row["trial_id"], name=row["stage_name"],
        position=row["position"], status=StageStatus(row["status"]), attempts=row["attempts"],
        interruptions=row["interruptions"], next_attempt_at=row["next_attempt_at"],
        started_at=row["started_at"], finished_at=row["finished_at"],
        results=loads(row["results"]), error_message=row["error_message"],
        error_traceback=row["error_traceback"], reason=row["reason"],
    )


class TrialsMixin(BaseStore):
    """Trials and stages: adding, finding and moving them."""

    # -- bookkeeping ----------------------------------------------------------------------------

    def _refresh_due(self, trial_id: int) -> None:
        row = self._one(
            "SELECT t.status, t.due_at, s.status, s.next_attempt_at FROM trials t"
            " LEFT JOIN stages s ON s.trial_id = t.id AND s.position = t.stage_pos"
            " WHERE t.id = ?",
            [trial_id],
        )
        if row is None:
            return
        trial_status, old, stage_status, next_at = row
        waiting = trial_status in LIVE and stage_status == StageStatus.PENDING
        due = (next_at or 0.0) if waiting else None
        if due != old:  # most refreshes change nothing; skip the index write
            self.conn.execute("UPDATE trials SET due_at = ? WHERE id = ?", [due, trial_id])

    def set_trial_status(
        self, trial: Trial, new: TrialStatus, now: float, reason: str | None = None, **sets: Any
    ) -> None:
        """Change a trial's status and record the event, in the caller's transaction.

        The reason describes the current status: a change without one clears the old one
        (it stays in the events)."""
        if reason is not None or new != trial.status:
            sets["reason"] = reason
        self._transition("trials", trial.id, trial.status, new, now, **sets)
        if new != trial.status:
            self.add_event(f"trial.{new.value}", now, trial.id, None, trial.status.value,
                           new.value, reason)
        self._refresh_due(trial.id)

    def set_stage_status(
        self, stage: StageRun, new: StageStatus, now: float, message: str | None = None,
        *, event_data: dict[str, Any] | None = None, **sets: Any,
    ) -> None:
        """Change a stage's status and record the event, in the caller's transaction."""
        self._transition("stages", stage.id, stage.status, new, now, **sets)
        self.add_event(f"stage.{new.value}", now, stage.trial_id, stage.name,
                       stage.status.value, new.value, message, event_data)

    # -- discovery ------------------------------------------------------------------------------

    def add_trial(
        self, fields: dict[str, Any], stages: Sequence[tuple[str, StageStatus]], stage_pos: int,
        now: float, status: TrialStatus = TrialStatus.PENDING,
    ) -> int | None:
        """Insert a discovered trial and its stage rows; None if it was already known."""
        added = self.add_trials([fields], stages, stage_pos, now, status)
        return added[0] if added else None

    def add_trials(
        self, many: Sequence[dict[str, Any]], stages: Sequence[tuple[str, StageStatus]],
        stage_pos: int, now: float, status: TrialStatus = TrialStatus.PENDING,
    ) -> list[int]:
        """Insert discovered trials with their stage rows and events, in one transaction (the
        caller's, if open); returns the new row ids, in order. Trials already known (same
        study, generation and number) are left as they are.

        A handful of statements per call, whatever its size: a catch-up of a million trials
        costs executemany() calls, not a million round trips."""
        # A new trial's current stage has never been tried: due now if it waits to start
        # (what _refresh_due would compute for it).
        waiting = (status.value in LIVE and stage_pos < len(stages)
                   and stages[stage_pos][1] == StageStatus.PENDING)
        due = 0.0 if waiting else None
        rows = [
            (f["study"], f.get("study_id", 0), f.get("generation", 0), f["number"],
             f.get("trial_id"), status.value, stage_pos, due, f.get("value"),
             dumps(f.get("values")), dumps(f.get("params") or {}),
             dumps(f.get("user_attrs") or {}), dumps(f.get("constraints")),
             f.get("datetime_complete"), f.get("model_dir", ""), dumps(f.get("flags", [])),
             now, now)
            for f in many
        ]
        with self.transaction():
            # Under the write lock nothing else inserts: the rows above the current highest id
            # are exactly the ones this call added (INTEGER PRIMARY KEY: max(id) + 1 each).
            before = self._max_id("trials")
            self.conn.executemany(INSERT_TRIAL, rows)
            added = [int(r[0]) for r in self._all(
                "SELECT id FROM trials WHERE id > ? ORDER BY id", [before])]
            if not added:
                return []
            if stages:
                each = ", ".join(["(?, ?, ?)"] * len(stages))
                self.conn.execute(
                    f"WITH s (name, pos, status) AS (VALUES {each})"
                    " INSERT INTO stages (trial_id, stage_name, position, status, updated_at)"
                    " SELECT t.id, s.name, s.pos, s.status, ? FROM trials t, s"
                    " WHERE t.id > ? ORDER BY t.id, s.pos",
                    [*(v for pos, (name, st) in enumerate(stages) for v in (name, pos, st.value)),
                     now, before])
            kind, first_event = "trial.discovered", self._max_id("events")
            self.conn.execute(
                "INSERT INTO events (ts, trial_id, kind, new_status, message)"
                " SELECT ?, id, ?, status, study || ':' || trial_number FROM trials"
                " WHERE id > ? ORDER BY id", [now, kind, before])
            if kind in self.notify_kinds:  # as add_event does
                self.conn.execute(
                    "INSERT INTO outbox (event_id, next_attempt_at)"
                    " SELECT id, ? FROM events WHERE id > ? ORDER BY id", [now, first_event])
        return added

    def _max_id(self, table: str) -> int:
        return int(self._one(f"SELECT COALESCE(MAX(id), 0) FROM {table}")[0])  # type: ignore[index]

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

    # -- reads ----------------------------------------------------------------------------------

    def _trial_head(self, trial_id: int) -> Trial:
        """Just the id and status, for a transition on the hot path."""
        row = self._one("SELECT study, trial_number, status FROM trials WHERE id = ?", [trial_id])
        if row is None:
            raise NotFoundError(f"no trial with id {trial_id}")
        return Trial(id=trial_id, study=row[0], number=row[1], status=TrialStatus(row[2]))

    def get_trial(self, trial_id: int) -> Trial:
        """The trial with this row id."""
        row = self._one("SELECT * FROM trials WHERE id = ?", [trial_id])
        if row is None:
            raise NotFoundError(f"no trial with id {trial_id}")
        return to_trial(row)

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
        return to_trial(rows[0])

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
        return list(self.iter_trials(status, limit))

    def iter_trials(self, status: str | None = None, limit: int | None = None,
                    offset: int = 0, batch: int = 1000) -> Iterator[Trial]:
        """Trials in discovery order, read in pages by id: memory stays constant."""
        where, params = (" AND status = ?", [status]) if status else ("", [])
        sql = queries.TRIALS_PAGE.format(where=where)
        after, left = 0, limit if limit is not None else -1
        if offset:
            row = self._one(f"SELECT id FROM trials WHERE id > 0{where} ORDER BY id"
                            " LIMIT 1 OFFSET ?", [*params, offset - 1])
            if row is None:
                return
            after = row[0]
        while left:
            size = batch if left < 0 else min(batch, left)
            rows = self._all(sql, [after, *params, size])
            for row in rows:
                yield to_trial(row)
            if len(rows) < size:
                return
            after, left = rows[-1]["id"], left - len(rows) if left > 0 else left

    def stages_of(self, trial_id: int) -> list[StageRun]:
        """A trial's stages in configured order."""
        rows = self._all("SELECT * FROM stages WHERE trial_id = ? ORDER BY position", [trial_id])
        return [to_stage(row) for row in rows]

    def sibling_stages(self, stage_id: int) -> list[StageRun]:
        """Every stage of the trial this stage belongs to, in order."""
        rows = self._all(
            "SELECT * FROM stages WHERE trial_id = (SELECT trial_id FROM stages WHERE id = ?)"
            " ORDER BY position",
            [stage_id],
        )
        if not rows:
            raise NotFoundError(f"no stage with id {stage_id}")
        return [to_stage(row) for row in rows]

    def get_stage(self, stage_id: int) -> StageRun:
        """The stage row with this id."""
        row = self._one("SELECT * FROM stages WHERE id = ?", [stage_id])
        if row is None:
            raise NotFoundError(f"no stage with id {stage_id}")
        return to_stage(row)

    def events_of(self, trial_id: int) -> list[dict[str, Any]]:
        """A trial's audit trail, oldest first."""
        rows = self._all("SELECT * FROM events WHERE trial_id = ? ORDER BY id", [trial_id])
        return [dict(row) | {"data": loads(row["data"])} for row in rows]

    def stage_results(self, trial_id: int) -> dict[str, dict[str, Any]]:
        """Metrics of the trial's passed stages, by stage name."""
        return {s.name: s.results or {} for s in self.stages_of(trial_id)
                if s.status == StageStatus.PASSED}
