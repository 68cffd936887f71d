"""Stage attempts: claims (committed before anything is spawned) and the processes they run.

A claim commits first; then the daemon spawns; then, for a command stage, the process group it
started is written here, so a daemon started after a crash can find and kill what is left.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from pipeline_v2.errors import PipelineError
from pipeline_v2.models import StageRun, StageStatus, Trial, TrialStatus
from pipeline_v2.store.trials import LIVE, TrialsMixin

log = logging.getLogger("pipeline_v2.store")


class AttemptsMixin(TrialsMixin):
    """Claims and the process identity of running attempts."""

    def claim_attempts(self, stage_ids: Sequence[int], now: float) -> list[tuple[StageRun, Trial]]:
        """pending -> running for each stage of a still-live trial, counting the attempt.

        One transaction for the batch (the caller's, if one is open: it must commit before
        anything is spawned); a stage someone else moved first is simply left out, and one
        that cannot be claimed (a lost race) never costs the others their claims.
        """
        claimed = []
        with self.transaction():
            for stage_id in stage_ids:
                try:
                    with self.savepoint():
                        found = self._claim_one(stage_id, now)
                except PipelineError as exc:
                    log.warning("claim of stage %s skipped: %s", stage_id, exc)
                    continue
                if found is not None:
                    claimed.append(found)
        return claimed

    def _claim_one(self, stage_id: int, now: float) -> tuple[StageRun, Trial] | None:
        stage = self.get_stage(stage_id)
        trial = self.get_trial(stage.trial_id)
        if stage.status != StageStatus.PENDING or trial.status.value not in LIVE:
            return None
        self.set_stage_status(stage, StageStatus.RUNNING, now, f"attempt {stage.attempts + 1}",
                              attempts=stage.attempts + 1, started_at=now, finished_at=None,
                              proc_pid=None, proc_create_time=None, proc_boot_id=None)
        if trial.status == TrialStatus.PENDING:
            self._transition("trials", trial.id, trial.status, TrialStatus.PROCESSING, now)
            self.add_event("trial.processing", now, trial.id, None, TrialStatus.PENDING.value,
                           TrialStatus.PROCESSING.value)
            trial = replace(trial, status=TrialStatus.PROCESSING)
        # Its current stage now runs: nothing more to start for this trial.
        self.conn.execute("UPDATE trials SET due_at = NULL WHERE id = ?", [trial.id])
        running = replace(stage, status=StageStatus.RUNNING, attempts=stage.attempts + 1,
                          started_at=now, finished_at=None)
        return running, trial

    def claim_attempt(self, stage_id: int, now: float) -> StageRun | None:
        """Claim one stage; None if it was not claimable."""
        claimed = self.claim_attempts([stage_id], now)
        return claimed[0][0] if claimed else None

    def set_stage_processes(self, procs: Sequence[tuple[int, int, float, str]]) -> None:
        """Record (stage id, pid, create time, boot id) of just-spawned command groups."""
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE stages SET proc_pid = ?, proc_create_time = ?, proc_boot_id = ?"
                " WHERE id = ? AND status = 'running'",
                [(pid, created, boot, stage_id) for stage_id, pid, created, boot in procs],
            )

    def stage_process(self, stage_id: int) -> tuple[int, float, str] | None:
        """The recorded (pid, create time, boot id) of a stage's command, if any."""
        row = self._one("SELECT proc_pid, proc_create_time, proc_boot_id FROM stages"
                        " WHERE id = ?", [stage_id])
        if row is None or row[0] is None:
            return None
        return int(row[0]), float(row[1]), str(row[2])
