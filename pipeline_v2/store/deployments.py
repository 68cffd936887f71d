"""Deployments: supervised paper-trading processes, their identity, restarts and metrics."""

from __future__ import annotations

import sqlite3
from typing import Any

from pipeline_v2.errors import TransitionError
from pipeline_v2.models import (
    ACTIVE_DEPLOYMENT,
    Deployment,
    DeploymentStatus,
    StageStatus,
    TrialStatus,
)
from pipeline_v2.store.base import dumps, loads, sql_in
from pipeline_v2.store.trials import TrialsMixin

# Live: it holds (or is about to hold) a process or owes one a decision. A `crashed` row is
# decided in the same transaction; one left by an older version is still live. The schema's
# partial UNIQUE index (m005) allows one such row per trial.
LIVE_STATUSES = sql_in(ACTIVE_DEPLOYMENT | {DeploymentStatus.CRASHED})


def to_deployment(row: sqlite3.Row) -> Deployment:
    """A deployments row as a Deployment."""
    return Deployment(
        id=row["id"], trial_id=row["trial_id"], status=DeploymentStatus(row["status"]),
        run_dir=row["run_dir"], pid=row["pid"], create_time=row["create_time"],
        boot_id=row["boot_id"], restarts=row["restarts"],
        crash_times=loads(row["crash_times"], []), last_exit=row["last_exit"],
        last_heartbeat=row["last_heartbeat"], metrics=loads(row["metrics"]),
        started_at=row["started_at"], spawned_at=row["spawned_at"],
        next_start_at=row["next_start_at"], kill_at=row["kill_at"], reason=row["reason"],
        replaces=row["replaces"],
    )


class DeploymentsMixin(TrialsMixin):
    """Deployment rows and the trial / deploy-stage transitions that go with them.

    The daemon asks for its deployments several times a turn; the rows are kept in memory
    until the DB changes — by this connection (its change counter moves) or by another
    process (`PRAGMA data_version` moves) — so an idle turn re-reads and decodes nothing.
    """

    _cache_version: tuple[int, int] = (-1, -1)
    _cache: dict[tuple[str, ...], list[Any]]

    def _cached(self, key: tuple[str, ...], read: Any) -> list[Any]:
        version = (self.conn.execute("PRAGMA data_version").fetchone()[0],
                   self.conn.total_changes)
        if version != self._cache_version:
            self._cache_version, self._cache = version, {}
        if key not in self._cache:
            self._cache[key] = read()
        return list(self._cache[key])

    def deployment_rows(self, live_only: bool = False) -> list[dict[str, Any]]:
        """Deployments with their trial's reference, newest first (for status views)."""
        sql = (
            "SELECT d.*, t.study, t.trial_number, t.pinned FROM deployments d"
            " JOIN trials t ON t.id = d.trial_id"
        )
        if live_only:
            sql += f" WHERE d.status IN {LIVE_STATUSES}"
        rows = self._all(sql + " ORDER BY d.id DESC")
        return [
            dict(r) | {"trial": f"{r['study']}:{r['trial_number']}", "pinned": bool(r["pinned"]),
                       "crash_times": loads(r["crash_times"], []), "metrics": loads(r["metrics"])}
            for r in rows
        ]

    def get_deployment(self, deployment_id: int) -> Deployment:
        """The deployment with this id."""
        row = self._one("SELECT * FROM deployments WHERE id = ?", [deployment_id])
        if row is None:
            raise LookupError(f"no deployment {deployment_id}")
        return to_deployment(row)

    def deployments(self, *statuses: DeploymentStatus | str) -> list[Deployment]:
        """Deployments in these statuses (all when none given), oldest first."""
        sql, params = "SELECT * FROM deployments", [DeploymentStatus(s).value for s in statuses]
        if statuses:
            sql += f" WHERE status IN ({', '.join('?' * len(statuses))})"
        return self._cached(("d", *params), lambda: [
            to_deployment(r) for r in self._all(sql + " ORDER BY id", params)])

    def deployments_with_trials(self, *statuses: DeploymentStatus | str
                                ) -> list[tuple[Deployment, TrialStatus]]:
        """Deployments in these statuses with their trial's status: one query, not N."""
        params = [DeploymentStatus(s).value for s in statuses]
        sql = (f"SELECT d.*, t.status AS trial_status FROM deployments d JOIN trials t"
               f" ON t.id = d.trial_id WHERE d.status IN ({', '.join('?' * len(statuses))})"
               " ORDER BY d.id")
        return self._cached(("t", *params), lambda: [
            (to_deployment(r), TrialStatus(r["trial_status"])) for r in self._all(sql, params)])

    def promotion_inputs(self) -> tuple[int, ...]:
        """A cheap fingerprint of what promotion depends on: it changes with any event (a
        trial passing, a deployment starting or ending, a status change). O(1) in the number of
        trials: no count of passed trials."""
        row = self._one(
            "SELECT (SELECT COUNT(*) FROM deployments),"
            f" (SELECT COUNT(*) FROM deployments WHERE status IN {LIVE_STATUSES}),"
            " (SELECT COALESCE(MAX(id), 0) FROM events)"  # O(1): the rowid's end
        )
        return tuple(row) if row else ()

    def live_deployment(self, trial_id: int) -> Deployment | None:
        """The trial's deployment that is starting, running, stopping or in backoff."""
        row = self._one(
            f"SELECT * FROM deployments WHERE trial_id = ? AND status IN {LIVE_STATUSES}"
            " ORDER BY id DESC LIMIT 1",
            [trial_id],
        )
        return None if row is None else to_deployment(row)

    def latest_deployment(self, trial_id: int) -> Deployment | None:
        """The trial's most recent deployment, whatever its status."""
        row = self._one("SELECT * FROM deployments WHERE trial_id = ? ORDER BY id DESC LIMIT 1",
                        [trial_id])
        return None if row is None else to_deployment(row)

    def set_deployment_status(self, deployment: Deployment, new: DeploymentStatus, now: float,
                              message: str | None = None, **sets: Any) -> Deployment:
        """Change a deployment's status (checked) and record the event."""
        if "crash_times" in sets:
            sets["crash_times"] = dumps(sets["crash_times"])
        if "metrics" in sets:
            sets["metrics"] = dumps(sets["metrics"])
        with self.transaction():
            self._transition("deployments", deployment.id, deployment.status, new, now, **sets)
            if new != deployment.status:
                self.add_event(f"deployment.{new.value}", now, deployment.trial_id, None,
                               deployment.status.value, new.value, message)
        return self.get_deployment(deployment.id)

    def note_deployment(self, deployment_id: int, now: float, **sets: Any) -> None:
        """Update heartbeat / metrics / identity fields without a status change."""
        if "metrics" in sets:
            sets["metrics"] = dumps(sets["metrics"])
        assignments = ", ".join(f"{column} = ?" for column in sets)
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE deployments SET {assignments}, updated_at = ? WHERE id = ?",
                [*sets.values(), now, deployment_id],
            )

    def note_deployments(self, notes: list[tuple[int, dict[str, Any]]], now: float) -> None:
        """Several `note_deployment`s in one transaction (the periodic heartbeat check's)."""
        with self.transaction():
            for deployment_id, sets in notes:
                self.note_deployment(deployment_id, now, **sets)

    def has_event(self, trial_id: int, kind: str, since: float) -> bool:
        """True if the trial has an event of this kind at or after `since`."""
        return self._one("SELECT 1 FROM events WHERE trial_id = ? AND kind = ? AND ts >= ?"
                         " LIMIT 1", [trial_id, kind, since]) is not None

    def add_deployment_event(self, kind: str, trial_id: int, now: float, message: str) -> None:
        """An event about a deployment that is not a status change (e.g. a crash loop)."""
        with self.transaction():
            self.add_event(kind, now, trial_id, None, None, None, message)

    def begin_deployment(self, trial_id: int, stage: str, run_dir: str, now: float,
                         reason: str, *, pinned: bool = False,
                         replaces: int | None = None) -> Deployment:
        """Trial -> deployed, its deploy stage -> running, a deployment row due to start now.

        A deploy stage that ended before (a redeploy) starts over; its history stays in the
        events. `pinned` marks a deployment asked for by hand. Refused (TransitionError) if
        the trial already has a live deployment: checked inside the transaction, and enforced
        by a partial UNIQUE index besides."""
        with self.transaction():
            trial = self.get_trial(trial_id)
            live = self.live_deployment(trial_id)
            if live is not None:
                raise TransitionError(f"trial {trial.ref} already has a live deployment "
                                      f"({live.id}, {live.status.value})")
            deploy = next(s for s in self.stages_of(trial_id)
                          if s.name == stage)
            if deploy.status != StageStatus.RUNNING:
                if deploy.status != StageStatus.PENDING:
                    self.set_stage_status(deploy, StageStatus.PENDING, now, reason,
                                          error_message=None, error_traceback=None,
                                          finished_at=None)
                    deploy = next(s for s in self.stages_of(trial_id) if s.name == stage)
                self.set_stage_status(deploy, StageStatus.RUNNING, now, reason,
                                      attempts=deploy.attempts + 1, started_at=now)
            self.set_trial_status(trial, TrialStatus.DEPLOYED, now, reason,
                                  pinned=int(pinned), stage_pos=deploy.position)
            cursor = self.conn.execute(
                "INSERT INTO deployments (trial_id, status, run_dir, next_start_at, reason,"
                " replaces, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [trial_id, DeploymentStatus.BACKOFF.value, run_dir, now, reason, replaces, now],
            )
            self.add_event("deployment.created", now, trial_id, stage, None,
                           DeploymentStatus.BACKOFF.value, reason)
            return self.get_deployment(int(cursor.lastrowid or 0))

    def set_replaces(self, deployment_id: int, trial_id: int | None, now: float) -> None:
        """Record (or clear) the trial a deployment takes over from at its first heartbeat."""
        with self.transaction() as conn:
            conn.execute("UPDATE deployments SET replaces = ?, updated_at = ? WHERE id = ?",
                         [trial_id, now, deployment_id])

    def handover_targets(self) -> set[int]:
        """Trials that a live deployment is about to replace."""
        rows = self._all(f"SELECT replaces FROM deployments WHERE replaces IS NOT NULL AND"
                         f" status IN {LIVE_STATUSES}")
        return {int(r[0]) for r in rows}

    def finish_deployment(self, trial_id: int, stage: str, trial_status: TrialStatus,
                          stage_status: StageStatus, now: float, reason: str,
                          results: dict[str, Any] | None = None) -> None:
        """Trial -> validated / retired / passed, the deploy stage -> its verdict."""
        with self.transaction():
            trial = self.get_trial(trial_id)
            deploy = next(s for s in self.stages_of(trial_id)
                          if s.name == stage)
            sets: dict[str, Any] = {"finished_at": now, "reason": reason}
            if results is not None:
                sets["results"] = dumps(results)
            if deploy.status == StageStatus.RUNNING and stage_status != StageStatus.RUNNING:
                self.set_stage_status(deploy, stage_status, now, reason, **sets)
            if trial.status == TrialStatus.PAUSED:
                self.conn.execute("UPDATE trials SET paused_from = ? WHERE id = ?",
                                  [trial_status.value, trial_id])
            elif trial.status != trial_status:
                self.set_trial_status(trial, trial_status, now, reason)
            if trial_status != TrialStatus.VALIDATED and trial.pinned:
                self.conn.execute("UPDATE trials SET pinned = 0 WHERE id = ?", [trial_id])
