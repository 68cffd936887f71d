"""The loop: reap -> discover when due -> plan -> act -> heartbeat -> wait for an event or due time.

One control thread. Signal handlers only set flags and write to a wakeup fd; every wait is a
selector over worker pipes, process fds (a trader's exit), the CLI's wake socket and that wakeup
fd, until the next due time. Idle, nothing else wakes it: no per-turn polling.
"""

from __future__ import annotations

import errno
import os
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline_v2 import faults, plan
from pipeline_v2.config import Config, StageConfig, load_config
from pipeline_v2.daemon_ops import DaemonOps
from pipeline_v2.deployer import Deployer
from pipeline_v2.discovery import SLICE_S, Discovery
from pipeline_v2.errors import PipelineError
from pipeline_v2.guard import GuardMixin
from pipeline_v2.lock import DaemonLock
from pipeline_v2.logs import get_logger
from pipeline_v2.models import StageRun, StageStatus, Trial
from pipeline_v2.notify import Notifier
from pipeline_v2.paths import trial_dir
from pipeline_v2.reports.study import STUDY, study_gates
from pipeline_v2.signals import SignalsMixin
from pipeline_v2.stages.executors import check_executor, make_executor
from pipeline_v2.stages.launch import callable_task, command_launch
from pipeline_v2.stages.runner import StageRunner
from pipeline_v2.store import open_store
from pipeline_v2.supervisor import Supervisor, boot_id
from pipeline_v2.systemd import sd_notify, watchdog_interval
from pipeline_v2.upkeep import UpkeepMixin
from pipeline_v2.wake import WakeSocket

Mode = Literal["forever", "once", "until_idle"]
DEFAULT_SHUTDOWN_GRACE_S = 5.0
# The CLI wakes the daemon through the wake socket when it changes something. Without a socket
# (its path too long, or it cannot be bound) the controls are re-read every CONTROL_CHECK_S;
# with one, only every CONTROL_FALLBACK_S, in case a command's datagram went astray (e.g. its
# socket file was removed by hand).
CONTROL_CHECK_S = 5.0
CONTROL_FALLBACK_S = 60.0
BUSY_CAP_S = 1.0  # while attempts run, the loop looks at them at least this often
log = get_logger("daemon")


@dataclass
class RunSummary:
    """How a daemon run ended."""

    turns: int = 0
    attempts: int = 0
    reason: str = ""
    idle: bool = False


class Daemon(UpkeepMixin, SignalsMixin, GuardMixin):
    """Runs the pipeline against one state DB until stopped (or once, or until idle)."""

    def __init__(self, config_path: Path | None, *, mode: Mode = "forever",
                 timeout: float | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE_S) -> None:
        """`clock` stamps what is stored; `monotonic` times every deadline (a wall-clock step
        never kills an attempt early or late)."""
        self.config_path = config_path
        self.config: Config = load_config(config_path)
        check_executor(self.config.daemon.executor)
        # Resolved once: path resolution costs syscalls, and it runs per attempt otherwise.
        self.logs_path = self.config.logs_path
        self.storage_url = self.config.storage_url
        self.mode = mode
        self.timeout = timeout
        self.clock = clock
        self.monotonic = monotonic
        self.shutdown_grace = shutdown_grace
        self.space_probe: Callable[[], None] = lambda: faults.probe_space(self.logs_path)
        self.summary = RunSummary()
        self.stop_requests = 0
        self.reload_requested = False
        self.stop_deadline: float | None = None
        self.next_discovery = 0.0
        self.catching_up = False  # the last discovery poll stopped at its slice: more to read
        self.next_health = 0.0
        self.next_watchdog = 0.0
        self.next_control_check = 0.0
        self.control_every = CONTROL_CHECK_S  # CONTROL_FALLBACK_S once the wake socket is bound
        self.paused_all = False
        self.disk_full: str | None = None  # the reason, while nothing new may start
        self.next_space_probe = 0.0
        self.failing: set[str] = set()  # components whose last turn raised (health entries)
        self.unrecorded: dict[int, plan.Outcome] = {}  # outcomes to write (again) next turn
        self.spawned: list[tuple[int, int, float, str]] = []

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Take the lock, reconcile, loop, and clean up; leaves deployments running."""
        with DaemonLock(self.config.state_db_path):
            self.store = open_store(self.config)
            self.selector = selectors.DefaultSelector()
            previous = self._install_signals()
            self.wake = WakeSocket(self.config.state_db_path)
            if self.wake.sock is not None:
                self.selector.register(self.wake.sock, selectors.EVENT_READ, self._on_wake)
                self.control_every = CONTROL_FALLBACK_S
            executor = make_executor(self.config.daemon.executor, self.selector)
            self.runner = StageRunner(self.config.daemon.workers, self.selector,
                                      executor=executor,
                                      executor_spec=self.config.daemon.executor)
            self.executor_health: tuple[str, str] | None = None
            self.discovery = Discovery(self.config, self.store,
                                       slice_seconds=None if self.mode == "once" else SLICE_S)
            self.deployer = Deployer(self.config, self.store, Supervisor(self.selector),
                                     monotonic=self.monotonic)
            self.notifier = Notifier(self.config)
            self.ops = DaemonOps(self)
            self.started = self.clock()
            self.started_mono = self.monotonic()
            try:
                self.reconcile(self.started)
                self.deployer.reconcile(self.started)
                self._heartbeat(self.started, "running")
                self.ops.started(self.started)  # HTTP, health records, READY=1
                log.info("daemon_started", pid=os.getpid(), mode=self.mode,
                         state_db=str(self.config.state_db_path))
                if self.config.notify.webhook or self.config.notify.command:
                    self.notifier.start()
                self._loop()
            finally:
                self.ops.stopping()  # STOPPING=1, HTTP off
                self.runner.close()
                self.deployer.close()  # traders keep running for the next daemon to adopt
                if self.notifier.is_alive():
                    self.notifier.stop()
                self._guard("daemon", self.ops.stopped, self.clock(),
                            self.summary.reason or "error")
                self.discovery.close()
                self.store.close()
                self._restore_signals(previous)
                self.wake.close()
                self.selector.close()
                log.info("daemon_stopped", reason=self.summary.reason, turns=self.summary.turns)
        return self.summary

    def _loop(self) -> None:
        while True:
            now, mono = self.clock(), self.monotonic()
            self.turn(now, mono)
            self.summary.turns += 1
            reason = self._should_exit(now, mono)
            if reason:
                self.summary.reason = reason
                return
            self._wait(now, mono)

    def _should_exit(self, now: float, mono: float) -> str | None:
        if self.stop_requests and not self.runner.running:
            return "signal"
        grace_over = self.stop_deadline is not None and mono >= self.stop_deadline
        if self.stop_requests >= 2 or grace_over:
            self._interrupt_running(now)
            return "signal"
        if self.mode == "once" and self.summary.turns >= 1 and not self.runner.running:
            return "once"
        if self.mode == "until_idle" and self._is_idle(now):
            self.summary.idle = True
            return "idle"
        if self.timeout is not None and mono - self.started_mono >= self.timeout:
            self._interrupt_running(now)
            return "timeout"
        return None

    def _is_idle(self, now: float) -> bool:
        # Idle includes the outbox: every notification delivered, or waiting on its backoff.
        # Work held by `pause --all` is not work this daemon can do (paused trials never count:
        # they have no due time).
        return (not self.runner.running and not self.catching_up
                and (self.paused_all or not self.store.has_waiting_work())
                and self.deployer.is_idle()
                and not (self.notifier.is_alive() and self.store.has_due_notifications(now)))

    def _may_start_attempts(self) -> bool:
        return (not self.stop_requests and not self.paused_all and not self.disk_full
                and (self.mode != "once" or self.summary.turns == 0))

    def _on_wake(self) -> None:
        """A CLI command changed something: read the controls on this turn."""
        self.wake.drain()
        self.next_control_check = 0.0

    def wait_seconds(self, now: float, mono: float | None = None) -> float:
        """How long the loop may sleep: until the next thing it could act on. Idle, it never
        polls on a short timer: events (a signal, an exit, the wake socket, a worker's result)
        wake it; 1 s at most only while attempts run or under --timeout.

        A due time only counts when the loop may act on it (a free worker and attempts
        allowed; deployments allowed to start); else an event wakes it. Stored times are
        wall-clock (`now`), in-memory deadlines monotonic (`mono`). The systemd watchdog and
        the disk-full probe are due times too: nothing else wakes the loop for them.
        """
        mono = self.monotonic() if mono is None else mono
        may_start = self._may_start_attempts()
        wall_due = [self.deployer.next_due(now, may_start=not self.stop_requests
                                           and not self.paused_all and not self.disk_full)]
        mono_due = [self.stop_deadline, self.deployer.next_check_due()]
        if (may_start and len(self.runner.running) < self.config.daemon.workers
                and self.runner.is_ready):
            wall_due.append(self.store.next_attempt_time())  # else a result or connection wakes us
        if self.mode != "once" and not self.stop_requests:
            mono_due.append(self.next_discovery)
        mono_due += [self.next_control_check, self.next_health]
        if self.disk_full:
            mono_due.append(self.next_space_probe)
        if watchdog_interval():
            mono_due.append(self.next_watchdog)
        # A --timeout run (tests, CI) keeps the 1 s cadence so it ends close to its deadline.
        busy = self.runner.running or self.timeout is not None
        cap = BUSY_CAP_S if busy else self.control_every
        return min(plan.next_wake(now, *wall_due, cap=cap),
                   plan.next_wake(mono, *mono_due, cap=cap))

    def _select(self, timeout: float) -> list[tuple[selectors.SelectorKey, int]]:
        """Wait for an event (a worker result, a process exit, a signal) or the timeout."""
        return self.selector.select(timeout)

    def _wait(self, now: float, mono: float) -> None:
        timeout = self.wait_seconds(now, mono)
        self.ops.waiting(mono, timeout)
        for key, _ in self._select(timeout):
            key.data()

    # -- one turn -------------------------------------------------------------------------------

    def turn(self, now: float, mono: float | None = None) -> None:
        """Reap, discover when due, claim (committed) then start what is due, heartbeat.

        Nothing one trial, stage or component raises ends the loop: it is logged, recorded
        on that stage or as a health entry, and tried again next turn.
        """
        mono = self.monotonic() if mono is None else mono
        self.ops.turn_started(mono)
        if self.reload_requested:
            self._guard("config", self.reload)
        if self.stop_requests == 1 and self.stop_deadline is None:
            self.stop_deadline = mono + self.shutdown_grace
            log.info("shutdown_requested", running=len(self.runner.running))
        for stage_id, outcome in self.runner.reap(mono):
            self.unrecorded[stage_id] = outcome
            if outcome.kind == "requeue":  # the attempt met a full disk: so will the next ones
                self._on_disk_full(OSError(errno.ENOSPC, outcome.message or "disk full"), now)
        self._guard("executor", self._record_executor_health, now)
        if mono >= self.next_control_check:
            self._guard("controls", self._read_controls, mono)
        if self.disk_full and mono >= self.next_space_probe:
            self._probe_space(now, mono)
        if not self.stop_requests and mono >= self.next_discovery and (
            self.mode != "once" or self.summary.turns == 0
        ):
            self.discover(now, mono)
        may_start = (self._may_start_attempts()
                     and len(self.runner.running) < self.config.daemon.workers
                     and self.runner.is_ready)  # an unreachable cluster takes nothing
        claimed = []
        if may_start or self.unrecorded:
            claimed = self._guard("attempts", self._claim_and_record, now, may_start) or []
        for stage, trial in claimed:  # the claims are committed: a crash now leaves a trace
            self.start(stage, trial, now, mono)
        if self.spawned:
            spawned, self.spawned = self.spawned, []
            self._guard("attempts", self.store.set_stage_processes, spawned)
        self._guard("deployments", self.deployer.turn, now, mono=mono,
                    may_start=not self.stop_requests and not self.paused_all
                    and not self.disk_full)
        if mono >= self.next_health:
            self._guard("daemon", self._heartbeat, now, "running")
            self._guard("executor", self._record_executor_health, now, True)
            self._guard("health", self.ops.check, now)
            self.next_health = mono + self.config.daemon.health_check_interval
        if self.notifier.is_alive():
            self.notifier.wakeup.set()
        if mono >= self.next_watchdog and (interval := watchdog_interval()):
            sd_notify("WATCHDOG=1")
            self.next_watchdog = mono + interval

    def _claim_and_record(self, now: float, may_start: bool) -> list[tuple[StageRun, Trial]]:
        """One short transaction: this turn's claims and every outcome to record. It commits
        before anything is spawned, so no write lock is held across a process start."""
        with self.store.transaction():
            claimed = self.claim_due(now) if may_start else []
            for stage_id, outcome in list(self.unrecorded.items()):
                self._record_safely(stage_id, outcome, now)
        return claimed

    def claim_due(self, now: float) -> list[tuple[StageRun, Trial]]:
        """Claim due attempts up to the worker limit (the caller commits, then starts them)."""
        running = len(self.runner.running)
        due = self.store.due_attempts(now, max(0, self.config.daemon.workers - running))
        chosen = plan.attempts_to_start(due, running, self.config.daemon.workers,
                                        paused=self.paused_all, stopping=bool(self.stop_requests))
        return self.store.claim_attempts([d.stage_id for d in chosen], now) if chosen else []

    def start(self, stage: StageRun, trial: Trial, now: float,
              mono: float | None = None) -> None:
        """Hand a claimed (committed) attempt to the runner; a failed start is recorded on it."""
        mono = self.monotonic() if mono is None else mono
        self.summary.attempts += 1
        try:
            cfg = self.config.stages[stage.name]
            run_dir = trial_dir(self.logs_path, trial)
            log_path = run_dir / f"{stage.name}.log"
            if cfg.run:
                results = self.store.stage_results(trial.id) if stage.position else {}
                task = callable_task(self.config, cfg, stage, trial, run_dir, log_path, results)
                # None: it runs on a Dask worker, which ends it if we die (no local group).
                pid, created = self.runner.start_callable(
                    stage.id, task, cfg.timeout_seconds, mono) or (0, 0.0)
            else:
                launch = command_launch(self.config, cfg, stage, trial, run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                # The config's folder is the working directory (README: relative paths).
                pid, created = self.runner.start_command(
                    stage.id, launch.argv, launch.env, Path(self.config.base_dir), log_path,
                    launch.result_file, cfg.timeout_seconds, mono)
            if created:
                self.spawned.append((stage.id, pid, created, boot_id()))
        except Exception as exc:
            if faults.is_disk_full(exc):
                self._on_disk_full(exc, now)
                outcome = plan.Outcome("requeue", message=f"cannot start: {faults.describe(exc)}")
            else:
                log.warning("start_failed", stage_id=stage.id, error=faults.describe(exc))
                outcome = plan.Outcome("error", message=f"cannot start: {faults.describe(exc)}")
            self.unrecorded[stage.id] = outcome
            self._guard("attempts", self._record_safely, stage.id, outcome, now)

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
        if study_gates(config.stages[stage.name].parsed_gates):  # `study.pbo` and the like
            study = self.store.get_trial(stage.trial_id).study
            earlier[STUDY] = self.deployer.studies.get(self.store, study)
        update = plan.after_attempt(stage, outcome, statuses, earlier, config, now)
        # Read inside the turn's open transaction, the stage row cannot have moved since.
        fresh = stage if self.store.in_transaction else None
        self.store.apply_stage_update(update, now, fresh)
        if update.status != StageStatus.PASSED:  # passes are in the events table; keep logs lean
            log.info(f"stage_{update.status.value}", trial=self._ref(stage.trial_id),
                     stage=stage.name, attempt=stage.attempts, message=update.message)

    def _interrupt_running(self, now: float) -> None:
        """Kill what still runs and put it back to pending: not a failure."""
        for stage_id in list(self.runner.running):
            self.runner.kill(stage_id)
            self.record(stage_id, plan.Outcome("interrupted"), now)

    def _ref(self, trial_id: int) -> str:
        """The `study:number` reference every log line binds as `trial`."""
        return self.store.get_trial(trial_id).ref


def run_daemon(config_path: Path | None, mode: Mode, timeout: float | None) -> RunSummary:
    """Entry point for `pipeline run-daemon`; raises PipelineError for the CLI to map."""
    summary = Daemon(config_path, mode=mode, timeout=timeout).run()
    if mode == "until_idle" and not summary.idle and summary.reason == "timeout":
        raise PipelineError(f"--timeout: still busy after {timeout:g}s (not idle)")
    return summary

