"""Trials and their stages: discovery inserts, claims, recorded outcomes, control commands.

`trials.due_at` is kept current by every change here: the time the trial's current stage may
start, or NULL when it has nothing to start. It makes "what is due" an index range read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipeline_v2.errors import NotFoundError
from pipeline_v2.models import StageRun, StageStatus, Trial, TrialStatus
from pipeline_v2.store.base import BaseStore, dumps, loads

LIVE = ("pending", "processing")


@dataclass(frozen=True)
class DueAttempt:
    """A stage whose next attempt may start now."""

    stage_id: int
    trial_id: int
    stage: str
    attempts: int


def to_trial(row: sqlite3.Row) -> Trial:
    """A trials row as a Trial."""
    return Trial(
        id=row["id"], study=row["study"], number=row["trial_number"],
        status=TrialStatus(row["status"]), study_id=row["study_id"],
        generation=row["generation"], optuna_trial_id=row["optuna_trial_id"],
        value=row["value"], values=loads(row["values"]), params=loads(row["params"], {}),
        user_attrs=loads(row["user_attrs"], {}), model_dir=row["model_dir"],
        flags=loads(row["flags"], []), reason=row["reason"], paused_from=row["paused_from"],
        created_at=row["created_at"], updated_at=row["updated_at"],
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
    """Trials, stages and everything that moves them."""

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
        due = (next_at or 0.0) if trial_status in LIVE and stage_status == "pending" else None
        if due != old:  # most refreshes change nothing; skip the index write
            self.conn.execute("UPDATE trials SET due_at = ? WHERE id = ?", [due, trial_id])

    def set_trial_status(
        self, trial: Trial, new: TrialStatus, now: float, reason: str | None = None, **sets: Any
    ) -> None:
        """Change a trial's status and record the event, in the caller's transaction."""
        if reason is not None:
            sets["reason"] = reason
        self._transition("trials", trial.id, trial.status, new, now, **sets)
        if new != trial.status:
            self.add_event(f"trial.{new.value}", now, trial.id, None, trial.status.value,
                           new.value, reason)
        self._refresh_due(trial.id)

    def set_stage_status(
        self, stage: StageRun, new: StageStatus, now: float, message: str | None = None,
        **sets: Any,
    ) -> None:
        """Change a stage's status and record the event, in the caller's transaction."""
        self._transition("stages", stage.id, stage.status, new, now, **sets)
        self.add_event(f"stage.{new.value}", now, stage.trial_id, stage.name,
                       stage.status.value, new.value, message)

    # -- discovery ------------------------------------------------------------------------------

    def add_trial(
        self, fields: dict[str, Any], stages: Sequence[tuple[str, StageStatus]], stage_pos: int,
        now: float, status: TrialStatus = TrialStatus.PENDING,
    ) -> int | None:
        """Insert a discovered trial and its stage rows; None if it was already known."""
        row = {
            "study": fields["study"], "study_id": fields.get("study_id", 0),
            "generation": fields.get("generation", 0), "trial_number": fields["number"],
            "optuna_trial_id": fields.get("trial_id"), "status": status.value,
            "stage_pos": stage_pos, "value": fields.get("value"),
            "values": dumps(fields.get("values")), "params": dumps(fields.get("params") or {}),
            "user_attrs": dumps(fields.get("user_attrs") or {}),
            "constraints": dumps(fields.get("constraints")),
            "datetime_complete": fields.get("datetime_complete"),
            "model_dir": fields.get("model_dir", ""), "flags": dumps(fields.get("flags", [])),
            "created_at": now, "updated_at": now,
        }
        columns = ", ".join(f'"{c}"' for c in row)
        cursor = self.conn.execute(
            f"INSERT OR IGNORE INTO trials ({columns}) VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )
        if cursor.rowcount != 1:
            return None
        trial_id = int(cursor.lastrowid or 0)
        self.conn.executemany(
            "INSERT INTO stages (trial_id, stage_name, position, status, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(trial_id, name, pos, status.value, now) for pos, (name, status) in enumerate(stages)],
        )
        self.add_event("trial.discovered", now, trial_id, None, None, status.value,
                       f"{fields['study']}:{fields['number']}")
        self._refresh_due(trial_id)
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
        sql, params = "SELECT * FROM trials", []
        if status:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [to_trial(row) for row in self._all(sql, params)]

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

    # -- the engine -----------------------------------------------------------------------------

    def due_attempts(self, now: float, limit: int) -> list[DueAttempt]:
        """Current stages of live trials that may start now, oldest due first."""
        if limit <= 0:
            return []
        rows = self._all(
            "SELECT s.id, s.trial_id, s.stage_name, s.attempts FROM trials t"
            " JOIN stages s ON s.trial_id = t.id AND s.position = t.stage_pos"
            " WHERE t.due_at IS NOT NULL AND t.due_at <= ? ORDER BY t.due_at, t.id LIMIT ?",
            [now, limit],
        )
        return [DueAttempt(r[0], r[1], r[2], r[3]) for r in rows]

    def next_attempt_time(self) -> float | None:
        """The earliest time a stage of a live trial may start, if any."""
        row = self._one("SELECT MIN(due_at) FROM trials WHERE due_at IS NOT NULL")
        return row[0] if row else None

    def has_waiting_work(self) -> bool:
        """True while a live trial has a stage to start (now or at a scheduled retry)."""
        return self._one("SELECT 1 FROM trials WHERE due_at IS NOT NULL LIMIT 1") is not None

    def running_stages(self) -> list[StageRun]:
        """Stages whose attempt is under way (or was, when a daemon died)."""
        return [to_stage(r) for r in self._all("SELECT * FROM stages WHERE status = 'running'")]

    def not_running(self, stage_ids: Iterable[int]) -> list[int]:
        """Of these stage ids, the ones the DB no longer has as running (cancelled, reset)."""
        ids = list(stage_ids)
        rows = self._all(
            f"SELECT id FROM stages WHERE id IN ({', '.join('?' * len(ids))})"
            " AND status != 'running'",
            ids,
        )
        return [row[0] for row in rows]

    def claim_attempts(self, stage_ids: Sequence[int], now: float) -> list[tuple[StageRun, Trial]]:
        """pending -> running for each stage of a still-live trial, counting the attempt.

        One transaction for the batch; a stage someone else moved first is simply left out.
        """
        claimed = []
        with self.transaction():
            for stage_id in stage_ids:
                stage = self.get_stage(stage_id)
                trial = self.get_trial(stage.trial_id)
                if stage.status != StageStatus.PENDING or trial.status.value not in LIVE:
                    continue
                self.set_stage_status(stage, StageStatus.RUNNING, now,
                                      f"attempt {stage.attempts + 1}",
                                      attempts=stage.attempts + 1, started_at=now,
                                      finished_at=None)
                if trial.status == TrialStatus.PENDING:
                    self._transition("trials", trial.id, trial.status, TrialStatus.PROCESSING,
                                     now)
                    self.add_event("trial.processing", now, trial.id, None, "pending",
                                   "processing")
                    trial = replace(trial, status=TrialStatus.PROCESSING)
                # Its current stage now runs: nothing more to start for this trial.
                self.conn.execute("UPDATE trials SET due_at = NULL WHERE id = ?", [trial.id])
                running = replace(stage, status=StageStatus.RUNNING, attempts=stage.attempts + 1,
                                  started_at=now, finished_at=None)
                claimed.append((running, trial))
        return claimed

    def claim_attempt(self, stage_id: int, now: float) -> StageRun | None:
        """Claim one stage; None if it was not claimable."""
        claimed = self.claim_attempts([stage_id], now)
        return claimed[0][0] if claimed else None

    def apply_stage_update(self, update: Any, now: float, stage: StageRun | None = None) -> bool:
        """Record a decided outcome (a `plan.StageUpdate`); False if the stage moved meanwhile.

        `stage` may be passed when the caller read it inside its own open transaction.
        """
        with self.transaction():
            stage = stage if stage is not None else self.get_stage(update.stage_id)
            if stage.status != StageStatus.RUNNING:
                return False
            sets: dict[str, Any] = {
                "next_attempt_at": update.next_attempt_at, "interruptions": update.interruptions,
            }
            if update.status != StageStatus.PENDING:
                sets["finished_at"] = now
            for column in ("results", "error_message", "error_traceback", "reason"):
                value = getattr(update, column)
                if value is not None:
                    sets[column] = dumps(value) if column == "results" else value
            if update.attempts is not None:
                sets["attempts"] = update.attempts
            self.set_stage_status(stage, update.status, now, update.message, **sets)
            if update.skip:
                for later in self.stages_of(stage.trial_id):
                    if later.name in update.skip and later.status == StageStatus.PENDING:
                        self.set_stage_status(later, StageStatus.SKIPPED, now, "disabled")
            self._move_trial(self._trial_head(stage.trial_id), update.trial_status,
                             update.stage_pos, now, update.trial_reason)
        return True

    def _move_trial(self, trial: Trial, new: TrialStatus | None, stage_pos: int, now: float,
                    reason: str | None) -> None:
        if trial.status == TrialStatus.PAUSED and new is not None:
            # Paused meanwhile: resume lands on the outcome, not on the old status.
            self.conn.execute(
                "UPDATE trials SET stage_pos = ?, paused_from = ?, updated_at = ? WHERE id = ?",
                [stage_pos, new.value, now, trial.id],
            )
        elif new is not None and new != trial.status:
            self.set_trial_status(trial, new, now, reason, stage_pos=stage_pos)
        else:
            self.conn.execute(
                "UPDATE trials SET stage_pos = ?, updated_at = ? WHERE id = ?",
                [stage_pos, now, trial.id],
            )
        self._refresh_due(trial.id)

    # -- control commands (the daemon need not run) ---------------------------------------------

    def reset_stages(self, trial: Trial, stages: Sequence[StageRun], stage_pos: int,
                     new: TrialStatus, now: float, why: str) -> None:
        """Put stages back to pending with attempts reset, and the trial back in processing."""
        with self.transaction():
            for stage in stages:
                self.set_stage_status(stage, StageStatus.PENDING, now, why, attempts=0,
                                      interruptions=0, next_attempt_at=None,
                                      finished_at=None)
            self.set_trial_status(trial, new, now, why, stage_pos=stage_pos)

    def skip_stage(self, trial: Trial, stage: StageRun, stage_pos: int, new: TrialStatus | None,
                   now: float, also_skip: Sequence[str] = ()) -> None:
        """Mark a stage skipped by hand (and disabled ones after it) and move the trial on."""
        with self.transaction():
            self.set_stage_status(stage, StageStatus.SKIPPED, now, "skipped by hand")
            for later in self.stages_of(trial.id):
                if later.name in also_skip and later.status == StageStatus.PENDING:
                    self.set_stage_status(later, StageStatus.SKIPPED, now, "disabled")
            self._move_trial(trial, new, stage_pos, now, f"{stage.name} skipped")

    def pause_trial(self, trial: Trial, now: float) -> None:
        """Live trial -> paused, remembering where it was."""
        with self.transaction():
            self.set_trial_status(trial, TrialStatus.PAUSED, now, "paused",
                                  paused_from=trial.status.value)

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
