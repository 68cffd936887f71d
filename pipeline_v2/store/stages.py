"""Stage attempts: what is due, claims, recorded outcomes, and the control commands.

Every change keeps `trials.due_at` current (see `trials.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline_v2.models import StageRun, StageStatus, Trial, TrialStatus
from pipeline_v2.store import queries
from pipeline_v2.store.base import dumps
from pipeline_v2.store.trials import TrialsMixin, to_stage


@dataclass(frozen=True)
class DueAttempt:
    """A stage whose next attempt may start now."""

    stage_id: int
    trial_id: int
    stage: str
    attempts: int


class StagesMixin(TrialsMixin):
    """Claiming attempts, recording their outcomes, and pause / resume / cancel / skip / retry."""

    # -- the engine -----------------------------------------------------------------------------

    def due_attempts(self, now: float, limit: int) -> list[DueAttempt]:
        """Current stages of live trials that may start now, oldest due first."""
        if limit <= 0:
            return []
        rows = self._all(queries.DUE_ATTEMPTS, [now, limit])
        return [DueAttempt(r[0], r[1], r[2], r[3]) for r in rows]

    def next_attempt_time(self) -> float | None:
        """The earliest time a stage of a live trial may start, if any."""
        row = self._one(queries.NEXT_ATTEMPT_TIME)
        return row[0] if row else None

    def has_waiting_work(self) -> bool:
        """True while a live trial has a stage to start (now or at a scheduled retry)."""
        return self._one(queries.HAS_WAITING_WORK) is not None

    def running_stages(self) -> list[StageRun]:
        """Stages whose attempt is under way (or was, when a daemon died)."""
        return [to_stage(r) for r in self._all(queries.RUNNING_STAGES,
                                                [StageStatus.RUNNING.value])]

    def not_running(self, stage_ids: Iterable[int]) -> list[int]:
        """Of these stage ids, the ones the DB no longer has as running (cancelled, reset)."""
        ids = list(stage_ids)
        rows = self._all(
            f"SELECT id FROM stages WHERE id IN ({', '.join('?' * len(ids))})"
            " AND status != ?",
            [*ids, StageStatus.RUNNING.value],
        )
        return [row[0] for row in rows]

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
            if update.status in (StageStatus.PASSED, StageStatus.REJECTED):
                # A verdict is the current state; earlier attempts' errors stay in the events.
                sets |= {"error_message": None, "error_traceback": None}
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
        """Put stages back to pending with attempts reset, and the trial back in processing.

        A stage row holds its current state only: the verdict's metrics go with it, kept in
        this event's data (`pipeline show` lists them under the events, never as current)."""
        with self.transaction():
            for stage in stages:
                self.set_stage_status(stage, StageStatus.PENDING, now, why, attempts=0,
                                      interruptions=0, next_attempt_at=None,
                                      finished_at=None, error_message=None,
                                      error_traceback=None, reason=None, results=None,
                                      event_data=_earlier(stage))
            self.set_trial_status(trial, new, now, why, stage_pos=stage_pos)

    def skip_stage(self, trial: Trial, stage: StageRun, stage_pos: int, new: TrialStatus | None,
                   now: float, also_skip: Sequence[str] = ()) -> None:
        """Mark a stage skipped by hand (and disabled ones after it) and move the trial on.

        Skipped is the stage's whole state: an earlier verdict's metrics and error move into
        this event's data."""
        with self.transaction():
            self.set_stage_status(stage, StageStatus.SKIPPED, now, "skipped by hand",
                                  reason="skipped by hand", results=None, error_message=None,
                                  error_traceback=None, event_data=_earlier(stage))
            for later in self.stages_of(trial.id):
                if later.name in also_skip and later.status == StageStatus.PENDING:
                    self.set_stage_status(later, StageStatus.SKIPPED, now, "disabled")
            self._move_trial(trial, new, stage_pos, now, f"{stage.name} skipped")
            if new is not None and new == trial.status:  # the old reason (a retry) is history
                self.conn.execute("UPDATE trials SET reason = ? WHERE id = ?",
                                  [f"{stage.name} skipped", trial.id])

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


def _earlier(stage: StageRun) -> dict[str, Any] | None:
    """What a stage leaving its verdict had (for the event that records it), if anything."""
    earlier = {"results": stage.results, "reason": stage.reason,
               "error_message": stage.error_message}
    kept = {k: v for k, v in earlier.items() if v}
    return kept or None
