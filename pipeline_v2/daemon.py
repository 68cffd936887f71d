"""The loop: reap -> discover when due -> plan -> act -> heartbeat -> wait for an event or due time.

One control thread. Signal handlers only set flags and write to a wakeup fd; every wait is a
selector over worker pipes, process fds and that wakeup fd, capped at one second so control
commands from the CLI take effect within a second.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline_v2 import plan
from pipeline_v2.config import Config, StageConfig, load_config
from pipeline_v2.control import open_store
from pipeline_v2.deployer import Deployer
from pipeline_v2.discovery import Discovery
from pipeline_v2.errors import ConfigError, PipelineError
from pipeline_v2.lock import DaemonLock
from pipeline_v2.logs import get_logger
from pipeline_v2.models import StageRun, StageStatus, Trial
from pipeline_v2.notify import Notifier
from pipeline_v2.stages.pool import StageRunner
from pipeline_v2.stages.templates import render_argv, template_fields, trial_dir
from pipeline_v2.supervisor import Supervisor
from pipeline_v2.systemd import sd_notify, watchdog_interval

Mode = Literal["forever", "once", "until_idle"]
DEFAULT_SHUTDOWN_GRACE_S = 5.0
CONTROL_CHECK_S = 0.25  # CLI changes (pause --all, cancel) take effect within this
log = get_logger("daemon")


@dataclass
class RunSummary:
    """How a daemon run ended."""

    turns: int = 0
    attempts: int = 0
    reason: str = ""
    idle: bool = False


class Daemon:
    """Runs the pipeline against one state DB until stopped (or once, or until idle)."""

    def __init__(self, config_path: Path | None, *, mode: Mode = "forever",
                 timeout: float | None = None, clock: Callable[[], float] = time.time,
                 shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE_S) -> None:
        self.config_path = config_path
        self.config: Config = load_config(config_path)
        # Resolved once: path resolution costs syscalls, and it runs per attempt otherwise.
        self.logs_path = self.config.logs_path
        self.storage_url = self.config.storage_url
        self.mode = mode
        self.timeout = timeout
        self.clock = clock
        self.shutdown_grace = shutdown_grace
        self.summary = RunSummary()
        self.stop_requests = 0
        self.reload_requested = False
        self.stop_deadline: float | None = None
        self.next_discovery = 0.0
        self.next_health = 0.0
        self.next_watchdog = 0.0
        self.next_control_check = 0.0
        self.paused_all = False

    # -- signals --------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stop_requests += 1

    def _install_signals(self) -> dict[int, Any]:
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeup)
        previous = {s: signal.signal(s, self._on_signal)
                    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        previous[-1] = signal.set_wakeup_fd(self._wake_w.fileno())
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        self._wake_r.close()
        self._wake_w.close()

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Take the lock, reconcile, loop, and clean up; leaves deployments running."""
        with DaemonLock(self.config.state_db_path):
            self.store = open_store(self.config)
            self.selector = selectors.DefaultSelector()
            previous = self._install_signals()
            self.runner = StageRunner(self.config.daemon.workers, self.selector)
            self.discovery = Discovery(self.config, self.store)
            self.deployer = Deployer(self.config, self.store, Supervisor(self.selector))
            self.notifier = Notifier(self.config)
            self.started = self.clock()
            try:
                self.reconcile(self.started)
                self.deployer.reconcile(self.started)
                self._heartbeat(self.started, "running")
                sd_notify("READY=1")
                log.info("daemon_started", pid=os.getpid(), mode=self.mode,
                         state_db=str(self.config.state_db_path))
                if self.config.notify.webhook or self.config.notify.command:
                    self.notifier.start()
                self._loop()
            finally:
                sd_notify("STOPPING=1")
                self.runner.close()
                self.deployer.close()  # traders keep running for the next daemon to adopt
                if self.notifier.is_alive():
                    self.notifier.stop()
                self._heartbeat(self.clock(), "stopped")
                self.discovery.close()
                self.store.close()
                self._restore_signals(previous)
                self.selector.close()
                log.info("daemon_stopped", reason=self.summary.reason, turns=self.summary.turns)
        return self.summary

    def _loop(self) -> None:
        while True:
            now = self.clock()
            self.turn(now)
            self.summary.turns += 1
            reason = self._should_exit(now)
            if reason:
                self.summary.reason = reason
                return
            self._wait(now)

    def _should_exit(self, now: float) -> str | None:
        if self.stop_requests and not self.runner.running:
            return "signal"
        grace_over = self.stop_deadline is not None and now >= self.stop_deadline
        if self.stop_requests >= 2 or grace_over:
            self._interrupt_running(now)
            return "signal"
        if self.mode == "once" and self.summary.turns >= 1 and not self.runner.running:
            return "once"
        if self.mode == "until_idle" and self._is_idle():
            self.summary.idle = True
            return "idle"
        if self.timeout is not None and now - self.started >= self.timeout:
            self._interrupt_running(now)
            return "timeout"
        return None

    def _is_idle(self) -> bool:
        return (not self.runner.running and not self.store.has_waiting_work()
                and self.deployer.is_idle())

    def _wait(self, now: float) -> None:
        due = [self.stop_deadline, self.deployer.next_due()]
        if len(self.runner.running) < self.config.daemon.workers and not self.paused_all:
            due.append(self.store.next_attempt_time())  # else a worker's result wakes us
        if self.mode != "once" and not self.stop_requests:
            due.append(self.next_discovery)
        for key, _ in self.selector.select(plan.next_wake(now, *due, cap=1.0)):
            key.data()

    # -- one turn -------------------------------------------------------------------------------

    def turn(self, now: float) -> None:
        """Reap, discover when due, start what is due, heartbeat."""
        if self.reload_requested:
            self.reload()
        if self.stop_requests == 1 and self.stop_deadline is None:
            self.stop_deadline = now + self.shutdown_grace
            log.info("shutdown_requested", running=len(self.runner.running))
        finished = self.runner.reap(now)
        if now >= self.next_control_check:
            self._read_controls(now)
        if not self.stop_requests and now >= self.next_discovery and (
            self.mode != "once" or self.summary.turns == 0
        ):
            self.discover(now)
        may_start = (
            not self.stop_requests
            and (self.mode != "once" or self.summary.turns == 0)
            and len(self.runner.running) < self.config.daemon.workers
        )
        if may_start or finished:
            with self.store.transaction():  # one commit per turn for every claim and result
                if may_start:
                    # Freed workers get new work before results are written: both overlap.
                    self.start_due(now)
                for stage_id, outcome in finished:
                    self.record(stage_id, outcome, now)
        self.deployer.turn(now, may_start=not self.stop_requests and not self.paused_all)
        if now >= self.next_health:
            self._heartbeat(now, "running")
            self.next_health = now + self.config.daemon.health_check_interval
        if self.notifier.is_alive():
            self.notifier.wakeup.set()
        if now >= self.next_watchdog and (interval := watchdog_interval()):
            sd_notify("WATCHDOG=1")
            self.next_watchdog = now + interval

    def discover(self, now: float) -> None:
        """One discovery pass; a failing storage is a health entry, never a crash."""
        result = self.discovery.poll(now)
        self.next_discovery = now + self.config.daemon.check_interval
        if result.total or result.errors:
            log.info("discovery_polled", new=result.new, errors=result.errors,
                     ms=round(result.seconds * 1000, 3))

    def _read_controls(self, now: float) -> None:
        """What the CLI may have changed: pause-all, and attempts cancelled or reset."""
        self.paused_all = self.store.get_setting("paused_all") == "1"
        self.next_control_check = now + CONTROL_CHECK_S
        running = self.runner.running
        for stage_id in self.store.not_running(running) if running else []:
            log.info("stage_killed", stage_id=stage_id, reason="no longer running in the DB")
            self.runner.kill(stage_id)

    def start_due(self, now: float) -> None:
        """Claim and start due attempts up to the worker limit."""
        paused = self.paused_all
        running = len(self.runner.running)
        due = self.store.due_attempts(now, max(0, self.config.daemon.workers - running))
        chosen = plan.attempts_to_start(due, running, self.config.daemon.workers,
                                        paused=paused, stopping=bool(self.stop_requests))
        if chosen:
            for stage, trial in self.store.claim_attempts([d.stage_id for d in chosen], now):
                self.start(stage, trial, now)

    def start(self, stage: StageRun, trial: Trial, now: float) -> None:
        """Hand a claimed attempt to the runner."""
        self.summary.attempts += 1
        cfg = self.config.stages[stage.name]
        run_dir = trial_dir(self.logs_path, trial)
        log_path = run_dir / f"{stage.name}.log"
        try:
            if cfg.run:
                context = {
                    "study": trial.study, "number": trial.number, "params": trial.params,
                    "user_attrs": trial.user_attrs, "value": trial.value,
                    "values": trial.values, "trial_id": trial.optuna_trial_id,
                    "model_dir": trial.model_dir, "run_dir": str(run_dir), "stage": stage.name,
                    "stage_params": cfg.params,
                    "results": self.store.stage_results(trial.id) if stage.position else {},
                    "attempt": stage.attempts, "storage": self.storage_url,
                    "config_dir": self.config.base_dir,
                }
                task = {"target": cfg.run, "context": context, "log_path": str(log_path)}
                self.runner.start_callable(stage.id, task, cfg.timeout_seconds, now)
            else:
                argv = render_argv(cfg.command or [], template_fields(trial, run_dir))
                result_file = run_dir / f"{stage.name}.result.json"
                env = dict(os.environ, PIPELINE_RESULT_FILE=str(result_file),
                           PIPELINE_RUN_DIR=str(run_dir), PIPELINE_STAGE=stage.name,
                           PIPELINE_TRIAL=trial.ref, PIPELINE_ATTEMPT=str(stage.attempts),
                           PIPELINE_STAGE_PARAMS=json.dumps(cfg.params))
                run_dir.mkdir(parents=True, exist_ok=True)
                self.runner.start_command(stage.id, argv, env, run_dir, log_path, result_file,
                                          cfg.timeout_seconds, now)
        except (KeyError, IndexError, OSError, ValueError) as exc:
            self.record(stage.id, plan.Outcome("error", message=f"cannot start: {exc}"), now)

    def record(self, stage_id: int, outcome: plan.Outcome, now: float) -> None:
        """Decide what an attempt's outcome means and store it in one transaction."""
        stages = self.store.sibling_stages(stage_id)
        stage = next(s for s in stages if s.id == stage_id)
        if stage.status != StageStatus.RUNNING:
            return  # cancelled (or retried by hand) while it ran: the result is stale
        statuses = {s.name: s.status for s in stages}
        earlier = {s.name: s.results or {} for s in stages if s.status == StageStatus.PASSED}
        config = self.config
        if stage.name not in config.stages:  # removed by a reload while it ran
            config = config.model_copy(update={"stages": config.stages | {
                stage.name: StageConfig(run="removed:stage", max_attempts=1)}})
        update = plan.after_attempt(stage, outcome, statuses, earlier, config, now)
        # Read inside the turn's open transaction, the stage row cannot have moved since.
        fresh = stage if self.store.conn.in_transaction else None
        self.store.apply_stage_update(update, now, fresh)
        if update.status != StageStatus.PASSED:  # passes are in the events table; keep logs lean
            log.info(f"stage_{update.status.value}", trial_id=stage.trial_id, stage=stage.name,
                     attempt=stage.attempts, message=update.message)

    def _interrupt_running(self, now: float) -> None:
        """Kill what still runs and put it back to pending: not a failure."""
        for stage_id in list(self.runner.running):
            self.runner.kill(stage_id)
            self.record(stage_id, plan.Outcome("interrupted"), now)

    def reconcile(self, now: float) -> None:
        """Attempts left running by a dead daemon go back to pending (not a failure)."""
        for stage in self.store.running_stages():
            log.warning("attempt_interrupted", trial_id=stage.trial_id, stage=stage.name,
                        attempt=stage.attempts)
            self.record(stage.id, plan.Outcome("interrupted"), now)

    def reload(self) -> None:
        """SIGHUP: load the config again; keep the old one if the new one is invalid."""
        self.reload_requested = False
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc))
            return
        self.config = config
        self.logs_path = config.logs_path
        self.storage_url = config.storage_url
        self.runner.size = config.daemon.workers
        self.discovery.config = config
        self.deployer.configure(config)
        self.next_discovery = 0.0
        log.info("config_reloaded", stages=list(config.stages))

    def _heartbeat(self, now: float, status: str) -> None:
        running = len(self.runner.running)
        self.store.set_health("daemon", status, f"pid {os.getpid()}, {running} attempt(s) running",
                              now, {"pid": os.getpid(), "started_at": self.started})
        usage = shutil.disk_usage(self.config.state_db_path.parent)
        percent = 100 * usage.used / usage.total
        level = "warning" if percent >= self.config.daemon.disk_warn_percent else "ok"
        self.store.set_health("disk", level, f"{percent:.0f}% used", now)


def run_daemon(config_path: Path | None, mode: Mode, timeout: float | None) -> RunSummary:
    """Entry point for `pipeline run-daemon`; raises PipelineError for the CLI to map."""
    summary = Daemon(config_path, mode=mode, timeout=timeout).run()
    if mode == "until_idle" and not summary.idle and summary.reason == "timeout":
        raise PipelineError(f"--timeout: still busy after {timeout:g}s (not idle)")
    return summary

