"""A deployment's trader lifecycle: start, stop, exit, crash, and start-up reconciliation.

Invariants kept here, by construction rather than by timing:
- never two traders for one run dir: the row says `starting` (committed, no pid) before the
  spawn, the shim holds the run dir's lock for the trader's whole life, and every start first
  looks for a live shim there and re-adopts it instead;
- one logical change, one store transaction (a crash and its verdict, a stop and the trial's
  retirement), and signals only after the commit;
- nothing is signalled unless its shim is ours (`supervisor.is_ours`);
- one deployment's trouble never ends the daemon: `guarded` logs it, records it on the trial,
  and the next turn re-reads the row.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline_v2 import plan
from pipeline_v2.config import Config, DeployStageConfig
from pipeline_v2.logs import get_logger
from pipeline_v2.models import (
    LIVE_DEPLOYMENT,
    Deployment,
    DeploymentStatus,
    StageStatus,
    Trial,
    TrialStatus,
)
from pipeline_v2.processes import describe_exit
from pipeline_v2.store import Store
from pipeline_v2.supervisor import (
    EXIT_FILE,
    HEARTBEAT_FILE,
    LOG_FILE,
    SHIM_BUSY,
    Identity,
    Supervisor,
    find_shim,
    kill_trader,
    read_exit_code,
    shim_for,
    signal_trader,
)
from pipeline_v2.templates import render_argv, template_fields

D = DeploymentStatus
RUNNING = (D.STARTING, D.RUNNING)
OCCUPYING = tuple(sorted(LIVE_DEPLOYMENT))  # a stopping trader still holds its slot
# Every status a deployment may be left in that still owes the trial a verdict or a process.
UNSETTLED = (*OCCUPYING, D.BACKOFF, D.CRASHED, D.EXITED)
SHIM_EXIT_S = 5.0  # after the hard kill, how long the shim gets to reap and exit by itself
log = get_logger("deployer")


def identity_of(dep: Deployment) -> Identity | None:
    """The recorded identity, if the deployment has a process."""
    if dep.pid is None or dep.create_time is None or dep.boot_id is None:
        return None
    return Identity(dep.pid, dep.create_time, dep.boot_id)


def last_log_line(run_dir: Path, limit: int = 200) -> str | None:
    """The last non-empty line of the trader's paper.log, shortened."""
    try:
        with (run_dir / LOG_FILE).open("rb") as handle:
            handle.seek(max(0, handle.seek(0, 2) - 4096))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    last = next((line.strip() for line in reversed(lines) if line.strip()), None)
    return None if last is None else last[:limit]


class Lifecycle:
    """Starting, stopping and following traders; the Deployer adds promotion and evaluation."""

    store: Store
    supervisor: Supervisor
    rng: random.Random
    stage_name: str | None
    stage: DeployStageConfig | None
    config: Config

    def evaluate(self, dep: Deployment, now: float, finished: bool) -> None:
        """Apply the deploy stage's gates (the Deployer's)."""
        raise NotImplementedError

    # -- one deployment's trouble stays with it ---------------------------------------------------

    def guarded(self, trial_id: int | None, action: str, now: float, fn: Callable[..., Any],
                *args: Any) -> None:
        """Run one deployment's work; an exception is logged and recorded on its trial."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any one deployment
            log.exception("deployment_error", trial_id=trial_id, action=action, error=str(exc))
            try:
                self.store.add_deployment_event("deployment.error", trial_id, now,
                                                f"{action}: {exc}")
            except Exception:  # noqa: BLE001 - e.g. the disk is full: the log has it
                log.exception("deployment_error_unrecorded", trial_id=trial_id)

    # -- finding our own processes ----------------------------------------------------------------

    def shim_of(self, dep: Deployment) -> Identity | None:
        """The live shim of this deployment, if one of ours runs (see `supervisor.shim_for`)."""
        return shim_for(identity_of(dep), Path(dep.run_dir))

    def _ref(self, dep: Deployment) -> str:
        """The `study:number` reference every log line binds as `trial`."""
        return self.store.get_trial(dep.trial_id).ref

    def _adopt(self, dep: Deployment, shim: Identity, now: float) -> None:
        if shim != identity_of(dep):
            self.store.note_deployment(dep.id, now, pid=shim.pid, create_time=shim.create_time,
                                       boot_id=shim.boot_id)
        self.supervisor.adopt(dep.id, shim, Path(dep.run_dir))
        log.info("deployment_adopted", trial=self._ref(dep), deployment=dep.id, pid=shim.pid)

    # -- start-up reconciliation ----------------------------------------------------------------

    def reconcile(self, now: float) -> None:
        """Settle every deployment a dead daemon may have left half-way, then every trial left
        `deployed` with nothing behind it. With no deploy stage configured, traders are left
        alone, as each turn leaves them."""
        if self.stage is None:
            return
        for dep in self.store.deployments(*UNSETTLED):
            self.guarded(dep.trial_id, "reconcile", now, self.reconcile_one, dep, now)
        for trial in self.store.list_trials(TrialStatus.DEPLOYED.value):
            self.guarded(trial.id, "reconcile", now, self._settle_trial, trial.id, now)

    def reconcile_one(self, dep: Deployment, now: float) -> None:
        """Re-adopt a live trader, else finish what its exit, crash or evaluation left undone."""
        if dep.status in OCCUPYING:
            shim = self.shim_of(dep)
            if shim is not None:
                self._adopt(dep, shim, now)
            else:
                self.on_exit(dep, read_exit_code(Path(dep.run_dir)), now)
        elif dep.status == D.CRASHED:
            self._crashed(dep, dep.last_exit, now, dep.reason)
        elif dep.status == D.EXITED:
            latest = self.store.latest_deployment(dep.trial_id)
            if latest is not None and latest.id == dep.id:
                self.evaluate(dep, now, finished=True)

    def _settle_trial(self, trial_id: int, now: float) -> None:
        """A `deployed` trial whose latest deployment ended for good gets that verdict."""
        dep = self.store.latest_deployment(trial_id)
        paused = dep is not None and dep.status == D.STOPPED and dep.reason == "paused"
        if self.stage_name is None or paused or (dep is not None and dep.status in UNSETTLED):
            return  # live, awaiting evaluation, or paused (a resume restarts it)
        if dep is not None and dep.status == D.FATAL:
            self.store.finish_deployment(trial_id, self.stage_name, TrialStatus.FAILED,
                                         StageStatus.FAILED, now, dep.reason or "fatal")
            return
        why = (dep.reason or "stopped") if dep is not None else "no deployment"
        self.store.finish_deployment(trial_id, self.stage_name, TrialStatus.RETIRED,
                                     StageStatus.CANCELLED, now, why.removeprefix("retire: "))

    # -- starting ---------------------------------------------------------------------------------

    def start(self, dep: Deployment, now: float) -> None:
        """Start the trader for a deployment (first start, restart or resume) — or re-adopt the
        one still running in its run dir: never a second."""
        assert self.stage is not None
        run_dir = Path(dep.run_dir)
        shim = find_shim(run_dir)
        if shim is not None:
            with self.store.transaction():
                dep = self.store.set_deployment_status(
                    dep, D.STARTING, now, f"re-adopted pid {shim.pid}", next_start_at=None,
                    started_at=dep.started_at or now, spawned_at=dep.spawned_at or now)
                self._adopt(dep, shim, now)
            return
        trial = self.store.get_trial(dep.trial_id)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            for stale in (HEARTBEAT_FILE, EXIT_FILE):  # never read as this run's
                (run_dir / stale).unlink(missing_ok=True)
            argv = render_argv(self.stage.command or [], template_fields(trial, run_dir))
        except (KeyError, IndexError, ValueError, OSError) as exc:
            with self.store.transaction():
                dep = self.store.set_deployment_status(dep, D.STARTING, now, "start attempted")
                self.on_exit(dep, None, now, f"cannot start: {exc}")
            return
        restarts = dep.restarts + (1 if dep.started_at is not None else 0)
        # Committed before the spawn: a daemon killed from here on leaves `starting` without a
        # pid, and the next one finds the shim by its lock (or, if there is none, restarts).
        dep = self.store.set_deployment_status(
            dep, D.STARTING, now, "spawning", pid=None, create_time=None, boot_id=None,
            spawned_at=now, started_at=dep.started_at or now, restarts=restarts,
            next_start_at=None,
        )
        try:
            identity = self.supervisor.spawn(dep.id, argv, run_dir, env=self.trader_env(trial),
                                             cwd=Path(self.config.base_dir),
                                             log_max_bytes=int(self.stage.log_max_mb * 2**20),
                                             log_backups=self.stage.log_backups)
        except OSError as exc:
            self.on_exit(dep, None, now, f"cannot start: {exc}")
            return
        self.store.note_deployment(dep.id, now, pid=identity.pid,
                                   create_time=identity.create_time, boot_id=identity.boot_id)
        log.info("deployment_started", trial=trial.ref, pid=identity.pid, restarts=restarts)

    def trader_env(self, trial: Trial) -> dict[str, str]:
        """What a trader needs beyond its argv: the trial and the model-resolution inputs the
        stages have (the trial's params, and a default `strategy` from the stage params)."""
        assert self.stage is not None
        params = dict(self.stage.params)
        if "strategy" not in params:  # else the first earlier stage that names one
            params["strategy"] = next((s.params["strategy"] for s in self.config.stages.values()
                                       if "strategy" in s.params), None)
        return dict(os.environ, PIPELINE_TRIAL=trial.ref,
                    PIPELINE_TRIAL_PARAMS=json.dumps(trial.params),
                    PIPELINE_STAGE_PARAMS=json.dumps(params),
                    PIPELINE_CONFIG_DIR=self.config.base_dir)

    # -- stopping ---------------------------------------------------------------------------------

    def stop(self, dep: Deployment, now: float, reason: str) -> None:
        """Record the stop, then SIGTERM the trader's group; SIGKILL after stop_grace_seconds."""
        target = self.mark_stop(dep, now, reason)
        if target is not None:
            self.terminate(target, now)

    def mark_stop(self, dep: Deployment, now: float, reason: str) -> Deployment | None:
        """The stop as one transaction; returns the deployment to signal once it is committed."""
        assert self.stage is not None
        if dep.status in (D.BACKOFF, D.CRASHED):
            with self.store.transaction():
                self.store.set_deployment_status(dep, D.STOPPED, now, reason, reason=reason)
                self._after_stop(dep, reason, now)
            return None
        if dep.status not in (D.STARTING, D.RUNNING):
            return None
        return self.store.set_deployment_status(
            dep, D.STOPPING, now, reason, reason=reason,
            kill_at=now + self.stage.stop_grace_seconds,
        )

    def terminate(self, dep: Deployment, now: float) -> None:
        """SIGTERM a stopping trader (the trader handles it); if none of ours runs, it is down."""
        shim = self.shim_of(dep)
        if shim is None or not signal_trader(shim, Path(dep.run_dir), signal.SIGTERM):
            self.on_exit(dep, read_exit_code(Path(dep.run_dir)), now)

    def kill_stopping(self, dep: Deployment, now: float) -> None:
        """The grace is over: SIGKILL the trader's whole tree (the shim reaps it and exits);
        the shim itself only if it has not gone SHIM_EXIT_S later."""
        shim = self.shim_of(dep)
        if shim is None:
            self.on_exit(dep, read_exit_code(Path(dep.run_dir)), now)
            return
        due = dep.kill_at if dep.kill_at is not None else now
        kill_trader(shim, Path(dep.run_dir), shim_too=now >= due + SHIM_EXIT_S)

    def mark_retire(self, trial_id: int, now: float, reason: str) -> Deployment | None:
        """Retire a trial (at once if nothing runs); returns a trader to signal after commit."""
        assert self.stage_name is not None
        dep = self.store.live_deployment(trial_id)
        if dep is None:
            self.store.finish_deployment(trial_id, self.stage_name, TrialStatus.RETIRED,
                                         StageStatus.CANCELLED, now, reason)
            return None
        return self.mark_stop(dep, now, f"retire: {reason}")

    def retire(self, trial_id: int, now: float, reason: str) -> None:
        """Stop a trial's trader (if any) and retire the trial once it is down."""
        target = self.mark_retire(trial_id, now, reason)
        if target is not None:
            self.terminate(target, now)

    # -- what happens when a trader exits ---------------------------------------------------------

    def on_exit(self, dep: Deployment, code: int | None, now: float,
                why: str | None = None) -> None:
        """A trader ended: stopped on purpose, finished (exit 0), or crashed — one transaction."""
        self.supervisor.release(dep.id)
        if code == SHIM_BUSY:
            shim = find_shim(Path(dep.run_dir))
            if shim is not None:  # ours lost a race to a live shim: that one is the trader
                self._adopt(dep, shim, now)
                return
        with self.store.transaction():
            dep = self.store.get_deployment(dep.id)  # act on the row as it is now
            if dep.status == D.STOPPING and not (dep.reason or "").startswith("hung"):
                self.store.set_deployment_status(dep, D.STOPPED, now, dep.reason,
                                                 last_exit=code)
                self._after_stop(dep, dep.reason or "", now)
                return
            if code == 0 and dep.status != D.STOPPING:
                dep = self.store.set_deployment_status(dep, D.EXITED, now, "finished",
                                                       last_exit=0)
                self.evaluate(dep, now, finished=True)
                return
            hung = dep.status == D.STOPPING and (dep.reason or "").startswith("hung")
            self._crashed(dep, code, now, why or (dep.reason if hung else None))

    def _crashed(self, dep: Deployment, code: int | None, now: float, why: str | None) -> None:
        assert self.stage is not None and self.stage_name is not None
        detail = why or ("exit unknown" if code is None else describe_exit(code))
        last = last_log_line(Path(dep.run_dir))
        if last and not why:
            detail += f": {last}"  # the trader's last words, which paper.log alone had
        restart = self.stage.restart
        with self.store.transaction():  # crashed -> fatal -> event -> trial failed: all or none
            dep = self.store.set_deployment_status(dep, D.CRASHED, now, detail, last_exit=code)
            decision = plan.after_crash(dep.crash_times, now - (dep.spawned_at or now), now,
                                        restart.max_crashes, restart.window_seconds,
                                        restart.backoff, self.rng.random())
            if decision.fatal or not self.stage.auto_restart:
                message = (f"crash loop: {len(decision.crash_times)} crashes within "
                           f"{restart.window_seconds:g}s, last: {detail}" if decision.fatal
                           else f"crashed: {detail}")
                self.store.set_deployment_status(dep, D.FATAL, now, message,
                                                 crash_times=list(decision.crash_times))
                if decision.fatal:
                    self.store.add_deployment_event("deployment.crash_loop", dep.trial_id, now,
                                                    message)
                self.store.finish_deployment(dep.trial_id, self.stage_name, TrialStatus.FAILED,
                                             StageStatus.FAILED, now, message)
                log.error("deployment_fatal", trial=self._ref(dep), deployment=dep.id,
                          message=message)
                return
            self.store.set_deployment_status(
                dep, D.BACKOFF, now, f"{detail}; restart in {decision.delay:.2f}s",
                crash_times=list(decision.crash_times), next_start_at=now + decision.delay,
            )
        log.warning("deployment_crashed", trial=self._ref(dep), deployment=dep.id, detail=detail,
                    restart_in=round(decision.delay, 3))

    def _after_stop(self, dep: Deployment, reason: str, now: float) -> None:
        if reason.startswith("retire: ") and self.stage_name is not None:
            why = reason.removeprefix("retire: ")
            self.store.finish_deployment(dep.trial_id, self.stage_name, TrialStatus.RETIRED,
                                         StageStatus.CANCELLED, now, why)
