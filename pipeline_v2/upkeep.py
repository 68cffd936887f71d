"""The daemon's upkeep: start-up reconciliation of attempts, SIGHUP reload, the heartbeat,
discovery passes, the CLI's control changes and the executor's health.

A mixin of `daemon.Daemon`, kept apart so the loop itself reads in one screen.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from pipeline_v2 import faults, logs, plan
from pipeline_v2.config import load_config
from pipeline_v2.errors import ConfigError
from pipeline_v2.logs import get_logger
from pipeline_v2.stages.launch import kill_leftovers

log = get_logger("daemon")


class UpkeepMixin:
    """Reconcile, reload, heartbeat, discover and read controls; the attributes are the
    daemon's."""

    config: Any
    store: Any
    runner: Any
    ops: Any
    discovery: Any
    deployer: Any
    started: float
    disk_full: Any
    _guard: Any
    record: Any
    _ref: Any
    _on_disk_full: Any
    _set_failing: Any
    monotonic: Any
    next_discovery: float
    catching_up: bool
    next_control_check: float
    control_every: float
    paused_all: bool
    executor_health: Any

    def reconcile(self, now: float) -> None:
        """Attempts left running by a dead daemon: what is left of them is killed, then they go
        back to pending, counted as interrupted (not a failure). A deploy stage with a
        deployment is not an attempt: the deployer re-adopts and settles it."""
        deploy = self.config.deploy_stage
        for stage in self.store.running_stages():
            if (deploy is not None and stage.name == deploy[0]
                    and self.store.latest_deployment(stage.trial_id) is not None):
                continue
            log.warning("attempt_interrupted", trial=self._ref(stage.trial_id), stage=stage.name,
                        attempt=stage.attempts)
            self._guard("attempts", kill_leftovers, self.store, self.config.state_db_path, stage)
            self._guard("attempts", self.record, stage.id, plan.Outcome("interrupted"), now)

    def reload(self) -> None:
        """SIGHUP: load the config again; keep the old one if the new one is invalid."""
        self.reload_requested = False
        self.ops.reloading()
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc))
            self.ops.reloaded()
            return
        self.config = config
        self.logs_path = config.logs_path
        self.storage_url = config.storage_url
        self.runner.size = config.daemon.workers
        if config.daemon.executor != self.runner.executor_spec:
            log.warning("config_reload_partial", key="daemon.executor",
                        message="a new executor takes effect when the daemon restarts")
        self.discovery.config = config
        self.deployer.configure(config)
        self.next_discovery = 0.0
        log.info("config_reloaded", stages=list(config.stages))
        self.ops.reloaded()

    def _heartbeat(self, now: float, status: str) -> None:
        failed = logs.take_write_error()
        if failed is not None:
            if faults.is_disk_full(failed):
                self._on_disk_full(failed, now)
            else:
                self._set_failing("logs", f"cannot write the log: {faults.describe(failed)}", now)
        running = len(self.runner.running)
        self.store.set_health("daemon", status, f"pid {os.getpid()}, {running} attempt(s) running",
                              now, {"pid": os.getpid(), "started_at": self.started})
        usage = shutil.disk_usage(self.config.state_db_path.parent)
        percent = 100 * usage.used / usage.total
        if self.disk_full:
            return  # the disk entry says why nothing starts until a probe write succeeds
        level = "warning" if percent >= self.config.daemon.disk_warn_percent else "ok"
        self.store.set_health("disk", level, f"{percent:.0f}% used", now)

    def _record_executor_health(self, now: float, force: bool = False) -> None:
        """The executor's health entry, written when it changes (and with each heartbeat)."""
        health = self.runner.executor.health()
        if health is not None and (force or health != self.executor_health):
            if health[0] == "error" and health != self.executor_health:
                log.warning("executor_unavailable", message=health[1])
            self.executor_health = health
            self.store.set_health("executor", health[0], health[1], now)

    def discover(self, now: float, mono: float | None = None) -> None:
        """One discovery pass; a failing storage is a health entry, never a crash."""
        mono = self.monotonic() if mono is None else mono
        self.next_discovery = mono + self.config.daemon.check_interval
        result = self._guard("discovery", self.discovery.poll, now)
        self.catching_up = result is not None and result.more
        if self.catching_up:  # a first catch-up goes on next turn, after the loop's other work
            self.next_discovery = mono
        if result is not None:
            self.ops.polled(result, now)
        if result is not None and (result.total or result.errors):
            log.info("discovery_polled", new=result.new, errors=result.errors,
                     ms=round(result.seconds * 1000, 3))

    def _read_controls(self, mono: float) -> None:
        """What the CLI may have changed: pause-all, and attempts cancelled or reset."""
        self.next_control_check = mono + self.control_every
        self.paused_all = self.store.get_setting("paused_all") == "1"
        running = self.runner.running
        for stage_id in self.store.not_running(running) if running else []:
            log.info("stage_killed", stage_id=stage_id, reason="no longer running in the DB")
            self.runner.kill(stage_id)
