"""The deployment stage, run by the daemon each turn: promote the best passed trials, start and
restart their traders, notice hangs, evaluate, retire — all through the state DB, so a daemon
that stops (however it stops) leaves traders running for the next one to re-adopt.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

from pipeline_v2 import plan
from pipeline_v2.config import Config, DeployStageConfig
from pipeline_v2.logs import get_logger
from pipeline_v2.models import (
    Deployment,
    DeploymentStatus,
    StageStatus,
    TrialStatus,
)
from pipeline_v2.stages.gates import evaluate_gates
from pipeline_v2.stages.pool import describe_exit
from pipeline_v2.stages.templates import render_argv, template_fields, trial_dir
from pipeline_v2.store import Store
from pipeline_v2.supervisor import (
    HEARTBEAT_FILE,
    METRICS_FILE,
    Identity,
    Supervisor,
    heartbeat_age,
    is_alive,
    read_exit_code,
    signal_group,
)

D = DeploymentStatus
RUNNING = (D.STARTING.value, D.RUNNING.value)
OCCUPYING = (D.STARTING.value, D.RUNNING.value, D.STOPPING.value)
CHECK_EVERY_S = 1.0
NOTE_EVERY_S = 10.0
PROMOTE_EVERY_S = 30.0
PROMOTE_SPACING_S = 1.0
BY_HAND = "deployed by hand"
log = get_logger("deployer")


def identity_of(dep: Deployment) -> Identity | None:
    """The recorded identity, if the deployment has a process."""
    if dep.pid is None or dep.create_time is None or dep.boot_id is None:
        return None
    return Identity(dep.pid, dep.create_time, dep.boot_id)


def read_metrics(run_dir: Path) -> dict | None:
    """The trader's metrics.json, or None if absent or half-written."""
    try:
        data = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Deployer:
    """Owns the deployment stage's decisions and its traders' processes."""

    def __init__(self, config: Config, store: Store, supervisor: Supervisor,
                 rng: random.Random | None = None) -> None:
        self.store = store
        self.supervisor = supervisor
        self.rng = rng or random.Random()
        self.next_check = 0.0
        self.noted: dict[int, float] = {}
        self._promoted_for: tuple[int, ...] = ()
        self._promote_again = 0.0
        self._promote_not_before = 0.0
        self.configure(config)

    def configure(self, config: Config) -> None:
        """(Re)read the config: which stage deploys and how."""
        self.config = config
        found = config.deploy_stage
        self.stage_name, self.stage = found if found else (None, None)
        self.logs_dir = config.logs_path

    @property
    def enabled(self) -> bool:
        """True when a deploy stage is configured and enabled."""
        return self.stage is not None and self.stage.enabled

    # -- lifecycle ------------------------------------------------------------------------------

    def reconcile(self, now: float) -> None:
        """Re-adopt every trader whose identity still matches; the rest exited meanwhile."""
        for dep in self.store.deployments(*OCCUPYING):
            identity = identity_of(dep)
            if identity and self.supervisor.adopt(dep.id, identity, Path(dep.run_dir)):
                log.info("deployment_adopted", deployment=dep.id, pid=dep.pid)
                continue
            self.on_exit(dep, read_exit_code(Path(dep.run_dir)), now)

    def close(self) -> None:
        """Leave every trader running for the next daemon."""
        self.supervisor.close()

    def turn(self, now: float, *, may_start: bool) -> None:
        """Exits, deadlines, controls, health checks, evaluations, starts, promotions."""
        if self.stage is None:
            return
        for dep_id, code in self.supervisor.exited():
            self.on_exit(self.store.get_deployment(dep_id), code, now)
        for dep in self.store.deployments(D.STOPPING.value):
            if dep.next_start_at is not None and now >= dep.next_start_at:
                identity = identity_of(dep)
                if identity:
                    signal_group(identity, signal.SIGKILL)  # the grace is over
        self._follow_trials(now)
        if now >= self.next_check:
            self.next_check = now + CHECK_EVERY_S
            self._check_running(now)
        if may_start and self.enabled:
            self._promote(now)
            self._start_due(now)

    def next_due(self) -> float | None:
        """The next time something must happen without an event to wake us."""
        if self.stage is None:
            return None
        times = [self.next_check] if self.store.deployments(*OCCUPYING) else []
        times += [d.next_start_at for d in self.store.deployments(D.BACKOFF.value, D.STOPPING.value)
                  if d.next_start_at is not None]
        return min(times) if times else None

    def is_idle(self) -> bool:
        """Nothing running, starting, stopping or waiting to restart, and nothing to promote."""
        if self.stage is None:
            return True
        if self.store.deployments(*OCCUPYING, D.BACKOFF.value):
            return False
        return not self.enabled or self._promotion() == plan.Promotion()

    # -- decisions -----------------------------------------------------------------------------

    def _rank(self, trial_id: int) -> float:
        trial = self.store.get_trial(trial_id)
        results = self.store.stage_results(trial_id)
        return plan.rank_of(self.stage.rank_by, trial.value, results)

    def _promotion(self) -> plan.Promotion:
        stage: DeployStageConfig = self.stage  # type: ignore[assignment]
        waiting = [t.id for t in self.store.list_trials(TrialStatus.PASSED.value)
                   if self._deploy_stage_status(t.id) == StageStatus.PENDING]
        # A trader already stopping (being replaced) holds its slot but is not "deployed".
        live = self.store.deployments_with_trials(*RUNNING, D.BACKOFF.value)
        deployed = [(d.trial_id, self._rank(d.trial_id)) for d, status in live
                    if status == TrialStatus.DEPLOYED]
        return plan.promote([(t, self._rank(t)) for t in waiting], deployed,
                            stage.max_deployments, stage.min_improvement)

    def _deploy_stage_status(self, trial_id: int) -> StageStatus | None:
        for stage in self.store.stages_of(trial_id):
            if stage.name == self.stage_name:
                return stage.status
        return None

    def _promote(self, now: float) -> None:
        # Ranking reads every candidate's results: only when its inputs moved, and at most
        # once a second while stages churn out events.
        if now < self._promote_not_before:
            return
        key = self.store.promotion_inputs()
        if key == self._promoted_for and now < self._promote_again:
            return
        self._promoted_for, self._promote_again = key, now + PROMOTE_EVERY_S
        self._promote_not_before = now + PROMOTE_SPACING_S
        promotion = self._promotion()
        for trial_id in promotion.start:
            self.deploy(trial_id, now, "promoted: a slot was free")
        for old, new in promotion.replace:
            new_trial = self.store.get_trial(new)
            self.retire(old, now, f"replaced by trial {new_trial.number}")
            self.deploy(new, now, f"promoted: replaces trial {self.store.get_trial(old).number}")

    # -- actions --------------------------------------------------------------------------------

    def deploy(self, trial_id: int, now: float, reason: str) -> Deployment:
        """Record a deployment due to start (the start itself waits for a free slot)."""
        trial = self.store.get_trial(trial_id)
        run_dir = trial_dir(self.logs_dir, trial, "deployments")
        dep = self.store.begin_deployment(trial_id, self.stage_name, str(run_dir), now, reason)
        log.info("deployment_created", trial=trial.ref, reason=reason)
        return dep

    def _start_due(self, now: float) -> None:
        occupied = len(self.store.deployments(*OCCUPYING))
        capacity = self.stage.max_deployments
        for dep in self.store.deployments(D.BACKOFF.value):
            if dep.next_start_at is not None and dep.next_start_at > now:
                continue
            trial = self.store.get_trial(dep.trial_id)
            if trial.status not in (TrialStatus.DEPLOYED, TrialStatus.VALIDATED):
                continue
            if occupied >= capacity:
                if dep.reason == BY_HAND:
                    self._make_room_for(dep, now)
                continue  # a replaced trader is still stopping: never more than max at once
            self.start(dep, now)
            occupied += 1

    def _make_room_for(self, dep: Deployment, now: float) -> None:
        """A deployment asked for by hand replaces the lowest-ranked running one."""
        others = [d.trial_id for d in self.store.deployments(*RUNNING)
                  if self.store.get_trial(d.trial_id).status == TrialStatus.DEPLOYED]
        if others:
            worst = min(others, key=lambda t: (self._rank(t), t))
            number = self.store.get_trial(dep.trial_id).number
            self.retire(worst, now, f"replaced by trial {number} (deployed by hand)")

    def start(self, dep: Deployment, now: float) -> None:
        """Spawn the trader for a deployment (first start, restart or resume)."""
        trial = self.store.get_trial(dep.trial_id)
        run_dir = Path(dep.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / HEARTBEAT_FILE).unlink(missing_ok=True)
        try:
            argv = render_argv(self.stage.command or [], template_fields(trial, run_dir))
            identity = self.supervisor.spawn(dep.id, argv, run_dir,
                                             log_max_bytes=int(self.stage.log_max_mb * 2**20),
                                             log_backups=self.stage.log_backups)
        except (KeyError, IndexError, ValueError, OSError) as exc:
            self.store.set_deployment_status(dep, D.STARTING, now, "start attempted")
            self.on_exit(self.store.get_deployment(dep.id), None, now, f"cannot start: {exc}")
            return
        restarts = dep.restarts + (1 if dep.started_at is not None else 0)
        self.store.set_deployment_status(
            dep, D.STARTING, now, f"pid {identity.pid}", pid=identity.pid,
            create_time=identity.create_time, boot_id=identity.boot_id, spawned_at=now,
            started_at=dep.started_at or now, restarts=restarts, next_start_at=None,
        )
        log.info("deployment_started", trial=trial.ref, pid=identity.pid, restarts=restarts)

    def stop(self, dep: Deployment, now: float, reason: str) -> None:
        """SIGTERM the trader's group; the loop SIGKILLs it after stop_grace_seconds."""
        if dep.status == D.BACKOFF:
            self.store.set_deployment_status(dep, D.STOPPED, now, reason, reason=reason)
            self._after_stop(dep, reason, now)
            return
        if dep.status not in (D.STARTING, D.RUNNING):
            return
        identity = identity_of(dep)
        self.store.set_deployment_status(
            dep, D.STOPPING, now, reason, reason=reason,
            next_start_at=now + self.stage.stop_grace_seconds,
        )
        signalled = identity is not None and signal_group(identity, signal.SIGTERM)
        if identity is not None and not signalled and not is_alive(identity):
            self.on_exit(self.store.get_deployment(dep.id), None, now)  # already gone

    def retire(self, trial_id: int, now: float, reason: str) -> None:
        """Stop a trial's trader (if any) and retire the trial once it is down."""
        dep = self.store.live_deployment(trial_id)
        if dep is None:
            self.store.finish_deployment(trial_id, self.stage_name, TrialStatus.RETIRED,
                                         StageStatus.CANCELLED, now, reason)
            return
        self.stop(dep, now, f"retire: {reason}")

    # -- what happens when a trader exits ---------------------------------------------------------

    def on_exit(self, dep: Deployment, code: int | None, now: float,
                why: str | None = None) -> None:
        """A trader ended: stopped on purpose, finished (exit 0), or crashed."""
        self.supervisor.release(dep.id)
        if dep.status == D.STOPPING and not (dep.reason or "").startswith("hung"):
            self.store.set_deployment_status(dep, D.STOPPED, now, dep.reason, last_exit=code)
            self._after_stop(dep, dep.reason or "", now)
            return
        if code == 0 and dep.status != D.STOPPING:
            dep = self.store.set_deployment_status(dep, D.EXITED, now, "finished", last_exit=0)
            self.evaluate(dep, now, finished=True)
            return
        self._crashed(dep, code, now, why or dep.reason)

    def _crashed(self, dep: Deployment, code: int | None, now: float, why: str | None) -> None:
        detail = why or ("exit unknown" if code is None else describe_exit(code))
        dep = self.store.set_deployment_status(dep, D.CRASHED, now, detail, last_exit=code)
        restart = self.stage.restart
        decision = plan.after_crash(dep.crash_times, now - (dep.spawned_at or now), now,
                                    restart.max_crashes, restart.window_seconds, restart.backoff,
                                    self.rng.random())
        if decision.fatal or not self.stage.auto_restart:
            message = (f"crash loop: {len(decision.crash_times)} crashes within "
                       f"{restart.window_seconds:g}s" if decision.fatal else f"crashed: {detail}")
            self.store.set_deployment_status(dep, D.FATAL, now, message,
                                             crash_times=list(decision.crash_times))
            if decision.fatal:
                self.store.add_deployment_event("deployment.crash_loop", dep.trial_id, now,
                                                message)
            self.store.finish_deployment(dep.trial_id, self.stage_name, TrialStatus.FAILED,
                                         StageStatus.FAILED, now, message)
            log.error("deployment_fatal", deployment=dep.id, message=message)
            return
        self.store.set_deployment_status(
            dep, D.BACKOFF, now, f"{detail}; restart in {decision.delay:.2f}s",
            crash_times=list(decision.crash_times), next_start_at=now + decision.delay,
        )
        log.warning("deployment_crashed", deployment=dep.id, detail=detail,
                    restart_in=round(decision.delay, 3))

    def _after_stop(self, dep: Deployment, reason: str, now: float) -> None:
        if reason.startswith("retire: "):
            why = reason.removeprefix("retire: ")
            self.store.finish_deployment(dep.trial_id, self.stage_name, TrialStatus.RETIRED,
                                         StageStatus.CANCELLED, now, why)

    # -- health checks and evaluation -------------------------------------------------------------

    def _check_running(self, now: float) -> None:
        for dep in self.store.deployments(*RUNNING):
            run_dir = Path(dep.run_dir)
            age = heartbeat_age(run_dir, now)
            running_for = now - (dep.spawned_at or now)
            if dep.status == D.STARTING and age is not None:
                dep = self.store.set_deployment_status(dep, D.RUNNING, now, "first heartbeat")
            # A starting trader gets timeout_seconds for its first heartbeat; then each
            # heartbeat must come within heartbeat_timeout.
            limit = (self.stage.timeout_seconds if dep.status == D.STARTING
                     else self.stage.heartbeat_timeout)
            if plan.is_hung(age, running_for, limit):
                self.stop(dep, now, f"hung: no heartbeat for {limit:g}s")
                continue
            if now >= self.noted.get(dep.id, 0.0):  # the DB copy is for display: every 10 s
                self.noted[dep.id] = now + NOTE_EVERY_S
                metrics = read_metrics(run_dir)
                self.store.note_deployment(dep.id, now,
                                           last_heartbeat=None if age is None else now - age,
                                           **({"metrics": metrics} if metrics else {}))
            started = dep.started_at or now
            if (now - started >= self.stage.evaluate_after_seconds
                    and self.store.get_trial(dep.trial_id).status == TrialStatus.DEPLOYED):
                self.evaluate(self.store.get_deployment(dep.id), now, finished=False)

    def evaluate(self, dep: Deployment, now: float, finished: bool) -> None:
        """Apply the deploy stage's gates to metrics.json: validated, or retired."""
        metrics = read_metrics(Path(dep.run_dir))
        trial = self.store.get_trial(dep.trial_id)
        if trial.status not in (TrialStatus.DEPLOYED, TrialStatus.PAUSED):
            return
        if metrics is None:
            reasons = [f"{METRICS_FILE} missing or unreadable in {dep.run_dir}"]
        else:
            self.store.note_deployment(dep.id, now, metrics=metrics)
            reasons = evaluate_gates(self.stage.parsed_gates, metrics,
                                     self.store.stage_results(dep.trial_id))
        if not reasons:
            self.store.finish_deployment(dep.trial_id, self.stage_name, TrialStatus.VALIDATED,
                                         StageStatus.PASSED, now, "paper trading gates passed",
                                         results=metrics)
            log.info("trial_validated", trial=trial.ref)
            return
        reason = "; ".join(reasons)
        self.store.finish_deployment(dep.trial_id, self.stage_name, TrialStatus.RETIRED,
                                     StageStatus.REJECTED, now, reason, results=metrics)
        if not finished:
            self.stop(self.store.get_deployment(dep.id), now, f"gates failed: {reason}")

    # -- following what users did to trials ----------------------------------------------------

    def _follow_trials(self, now: float) -> None:
        """Pause stops a trader gracefully; resume restarts it from its saved state; cancel
        and by-hand stops end it."""
        for dep, status in self.store.deployments_with_trials(*RUNNING, D.BACKOFF.value):
            if status == TrialStatus.PAUSED:
                self.stop(dep, now, "paused")
            elif status in (TrialStatus.CANCELLED, TrialStatus.RETIRED, TrialStatus.FAILED):
                self.stop(dep, now, f"trial {status.value}")
        for dep in self.store.deployments(D.STOPPED.value):
            if dep.reason != "paused" or self.store.live_deployment(dep.trial_id):
                continue
            if self.store.get_trial(dep.trial_id).status == TrialStatus.DEPLOYED:
                self.start(dep, now)  # resumed: same run_dir, so the trader resumes its state
