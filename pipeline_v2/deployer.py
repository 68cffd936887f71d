"""The deployment stage, run by the daemon each turn: promote the best passed trials, notice
hangs, evaluate, follow pauses and stops — all through the state DB, so a daemon that stops
(however it stops) leaves traders running for the next one to re-adopt. Starting, stopping and
reconciling one trader is `lifecycle.Lifecycle`'s; ranking and promotion `promotion.py`'s.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline_v2 import plan
from pipeline_v2.config import Config
from pipeline_v2.gates import evaluate_gates
from pipeline_v2.lifecycle import OCCUPYING, RUNNING, Lifecycle, log
from pipeline_v2.models import Deployment, DeploymentStatus, StageStatus, TrialStatus
from pipeline_v2.promotion import BY_HAND, PromotionMixin
from pipeline_v2.reports.study import StudyCache, trial_gates
from pipeline_v2.store import Store
from pipeline_v2.supervisor import METRICS_FILE, Supervisor, heartbeat_age

D = DeploymentStatus
CHECK_EVERY_S = 1.0
NOTE_EVERY_S = 10.0
__all__ = ["BY_HAND", "Deployer", "read_metrics"]


def read_metrics(run_dir: Path) -> dict | None:
    """The trader's metrics.json, or None if absent or half-written."""
    try:
        data = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Deployer(Lifecycle, PromotionMixin):
    """Owns the deployment stage's decisions and its traders' processes."""

    def __init__(self, config: Config, store: Store, supervisor: Supervisor,
                 rng: random.Random | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """`monotonic` times the in-memory checks; the wall `now` of each turn is only stored
        (or compared with stored times), so a clock step never stalls a check."""
        self.store = store
        self.supervisor = supervisor
        self.rng = rng or random.Random()
        self.monotonic = monotonic
        self.mono = monotonic()  # this turn's reading: every in-memory timer counts from it
        self.next_check = 0.0
        self.noted: dict[int, float] = {}
        self._evidence_noted: set[int] = set()
        self._promoted_for: tuple[int, ...] = ()
        self._promote_again = 0.0
        self._promote_not_before = 0.0
        self._promote_deferred = False  # a turn came within the spacing: pass again after it
        self.studies = StudyCache()
        self.configure(config)

    def configure(self, config: Config) -> None:
        """(Re)read the config: which stage deploys and how (then promote again: the slots or
        the ranking may have changed without an event)."""
        self.config = config
        self._promoted_for = ()
        found = config.deploy_stage
        self.stage_name, self.stage = found if found else (None, None)
        self.logs_dir = config.logs_path
        if self.stage is not None:
            self.store.ensure_rank_index(self.stage.rank_by)  # once per DB; then a no-op

    @property
    def enabled(self) -> bool:
        """True when a deploy stage is configured and enabled."""
        return self.stage is not None and self.stage.enabled

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Leave every trader running for the next daemon."""
        self.supervisor.close()

    def turn(self, now: float, *, may_start: bool, mono: float | None = None) -> None:
        """Exits, deadlines, controls, health checks, evaluations, starts, promotions — each
        deployment's work guarded, so one bad row never stops the others or the loop.

        `now` (wall) is stored; `mono`, the turn's monotonic reading, paces the checks."""
        self.mono = self.monotonic() if mono is None else mono
        if self.stage is None:
            return
        for dep_id, code in self.supervisor.exited():
            self.guarded(None, f"exit of deployment {dep_id}", now, self._exited, dep_id, code,
                         now)
        for dep in self.store.deployments(D.STOPPING):
            if dep.kill_at is not None and now >= dep.kill_at:
                self.guarded(dep.trial_id, "kill", now, self.kill_stopping, dep, now)
        self._follow_trials(now)
        if self.mono >= self.next_check:
            self._check_running(now)
            self.next_check = self.mono + self._check_every(now)
        if may_start and self.enabled:
            self.guarded(None, "promote", now, self._promote, now)
            self._start_due(now)

    def _exited(self, dep_id: int, code: int | None, now: float) -> None:
        dep = self.store.get_deployment(dep_id)
        self.guarded(dep.trial_id, "exit", now, self.on_exit, dep, code, now)

    def next_check_due(self) -> float | None:
        """The next in-memory check of running traders, on the monotonic clock."""
        if self.stage is None:
            return None
        times = [self.next_check] if self.store.deployments(*OCCUPYING) else []
        if self.enabled and self._promote_deferred and self._promote_not_before > self.mono:
            times.append(self._promote_not_before)  # a pass deferred by the spacing (an idle
            # loop after a pass has nothing to pass again for: it does not wake for it)
        return min(times) if times else None

    def next_due(self, now: float, may_start: bool = True) -> float | None:
        """The next time something must happen without an event to wake us.

        Never a time already past that the turn could not act on, or the loop would spin: a
        deployment due but waiting for a slot (a trader's exit or stop wakes us), one that may
        not start now (pause --all, shutdown), a trader already SIGKILLed (its exit wakes us;
        we look again each second).
        """
        if self.stage is None:
            return None
        times: list[float] = []  # stored (wall-clock) times only; see next_check_due
        if may_start:
            blocked = {d.id for d in self.blocked_deployments(now)}
            times += [d.next_start_at for d in self.store.deployments(D.BACKOFF)
                      if d.next_start_at is not None and d.id not in blocked]
        times += [d.kill_at if d.kill_at > now else now + CHECK_EVERY_S
                  for d in self.store.deployments(D.STOPPING) if d.kill_at is not None]
        return min(times) if times else None

    def is_idle(self) -> bool:
        """Nothing running, starting, stopping or waiting to restart, and nothing to promote."""
        if self.stage is None:
            return True
        if self.store.deployments(*OCCUPYING, D.BACKOFF):
            return False
        # Fresh: a PBO throttled since the last stage finished must not make us look idle.
        return not self.enabled or self._promotion(fresh=True) == plan.Promotion()

    # -- actions --------------------------------------------------------------------------------

    # -- health checks and evaluation -------------------------------------------------------------

    def _check_every(self, now: float) -> float:
        """Seconds between health checks: a quarter of heartbeat_timeout (at most NOTE_EVERY_S),
        so an idle daemon rarely wakes. While a trader awaits its first heartbeat, a quarter of
        the time it has waited so far (at least CHECK_EVERY_S): a fresh trader is looked at each
        second, one slow to start less and less often (its first heartbeat is noticed within a
        quarter of its start-up time, and a hang within a quarter of timeout_seconds)."""
        assert self.stage is not None
        running = self.store.deployments(*RUNNING)
        every = min(NOTE_EVERY_S, max(CHECK_EVERY_S, self.stage.heartbeat_timeout / 4))
        # Nothing running: nothing to check, and no wake either (next_check_due is None).
        if not running:
            return CHECK_EVERY_S
        for dep in running:
            if dep.status == D.STARTING:
                waited = max(0.0, now - (dep.spawned_at or now))
                every = min(every, max(CHECK_EVERY_S, min(waited, self.stage.timeout_seconds) / 4))
        return every

    def _check_running(self, now: float) -> None:
        notes: list[tuple[int, dict[str, Any]]] = []  # display copies: one write for them all
        for dep in self.store.deployments(*RUNNING):
            self.guarded(dep.trial_id, "check", now, self._check_one, dep, now, notes)
        if notes:
            self.guarded(None, "note heartbeats", now, self.store.note_deployments, notes, now)

    def _check_one(self, dep: Deployment, now: float,
                   notes: list[tuple[int, dict[str, Any]]]) -> None:
        if dep.id not in self.supervisor.watched:  # lost track of it (a failed step): settle it
            self.reconcile_one(dep, now)
            return
        assert self.stage is not None
        age = heartbeat_age(dep.run_dir, now)
        running_for = now - (dep.spawned_at or now)
        if dep.status == D.STARTING and age is not None:
            dep = self.store.set_deployment_status(dep, D.RUNNING, now, "first heartbeat")
            self.hand_over(dep, now)
        # A starting trader gets timeout_seconds for its first heartbeat; then each
        # heartbeat must come within heartbeat_timeout.
        limit = (self.stage.timeout_seconds if dep.status == D.STARTING
                 else self.stage.heartbeat_timeout)
        if plan.is_hung(age, running_for, limit):
            self.stop(dep, now, f"hung: no heartbeat for {limit:g}s")
            return
        if self.mono >= self.noted.get(dep.id, 0.0):  # the DB copy is for display: every 10 s
            self.noted[dep.id] = self.mono + NOTE_EVERY_S
            metrics = read_metrics(Path(dep.run_dir))
            heartbeat = None if age is None else now - age
            if heartbeat != dep.last_heartbeat or (metrics and metrics != dep.metrics):
                notes.append((dep.id, {"last_heartbeat": heartbeat,
                                       **({"metrics": metrics} if metrics else {})}))
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
        if metrics is None and not finished:
            return  # no evidence at all yet: a running trader is judged once it reports
        if metrics is None:
            reasons = [f"{METRICS_FILE} missing or unreadable in {dep.run_dir}"]
        else:
            self.store.note_deployment(dep.id, now, metrics=metrics)
            short = plan.evidence_shortfall(metrics, self.stage.min_bars, self.stage.min_trades)
            if short and not finished:
                # No verdict on too little paper trading: keep trading, look again later.
                if dep.id not in self._evidence_noted and not self.store.has_event(
                        dep.trial_id, "deployment.evidence", dep.started_at or now):
                    self._evidence_noted.add(dep.id)  # once: the metrics show the rest
                    self.store.add_deployment_event("deployment.evidence", dep.trial_id, now,
                                                    "not enough evidence yet: " + ", ".join(short))
                return
            reasons = ([f"not enough evidence: {', '.join(short)}"] if short else
                       evaluate_gates(trial_gates(self.stage.parsed_gates), metrics,
                                      self.store.stage_results(dep.trial_id)))
        if not reasons:
            self.store.finish_deployment(dep.trial_id, self.stage_name, TrialStatus.VALIDATED,
                                         StageStatus.PASSED, now, "paper trading gates passed",
                                         results=metrics)
            log.info("trial_validated", trial=trial.ref)
            return
        reason = "; ".join(reasons)
        with self.store.transaction():  # the verdict and the stop it implies: one change
            self.store.finish_deployment(dep.trial_id, self.stage_name, TrialStatus.RETIRED,
                                         StageStatus.REJECTED, now, reason, results=metrics)
            target = None if finished else self.mark_stop(
                self.store.get_deployment(dep.id), now, f"gates failed: {reason}")
        if target is not None:
            self.terminate(target, now)

    # -- following what users did to trials ----------------------------------------------------

    def _follow_trials(self, now: float) -> None:
        """Pause stops a trader gracefully; resume restarts it from its saved state; cancel
        and by-hand stops end it."""
        for dep, status in self.store.deployments_with_trials(*RUNNING, D.BACKOFF):
            if status == TrialStatus.PAUSED:
                self.guarded(dep.trial_id, "pause", now, self.stop, dep, now, "paused")
            elif status not in (TrialStatus.DEPLOYED, TrialStatus.VALIDATED):
                self.guarded(dep.trial_id, "stop", now, self.stop, dep, now,
                             f"trial {status.value}")
        for dep in self.store.deployments(D.STOPPED):
            if dep.reason != "paused" or self.store.live_deployment(dep.trial_id):
                continue
            if self.store.get_trial(dep.trial_id).status == TrialStatus.DEPLOYED:
                # resumed: same run_dir, so the trader resumes its state
                self.guarded(dep.trial_id, "resume", now, self.start, dep, now)
