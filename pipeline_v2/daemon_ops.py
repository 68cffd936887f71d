"""What the daemon does for its operators: HTTP thread, health records, loop lag, sd_notify.

Kept out of daemon.py so the loop stays about trials; the daemon calls its hooks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from pipeline_v2 import monitor
from pipeline_v2.discovery import DiscoveryResult
from pipeline_v2.health import Check, Level
from pipeline_v2.http.server import HttpService
from pipeline_v2.logs import get_logger
from pipeline_v2.models import TrialStatus
from pipeline_v2.systemd import sd_notify, under_systemd

log = get_logger("daemon")


class _Daemon(Protocol):
    """What the hooks read of the daemon (not imported: the daemon imports this module)."""

    config: Any
    store: Any
    runner: Any
    clock: Callable[[], float]
    failing: set[str]
    disk_full: str | None


class DaemonOps:
    """Operator-facing duties of one daemon run."""

    def __init__(self, daemon: _Daemon, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.daemon = daemon
        self.monotonic = monotonic
        self.facts = monitor.LoopFacts()
        self.http = HttpService(lambda: daemon.config)
        self.expected_wake: float | None = None

    def started(self, now: float) -> None:
        """After reconciliation: serve HTTP, record every component, tell systemd we're ready."""
        self.http.start()
        self.facts.http = monitor.http_check(self.http.address, self.http.bound, self.http.error)
        try:
            self.check(now)
        except Exception:  # health records are best effort: the loop's guard retries them
            log.exception("health_failed")
        sd_notify("READY=1")

    def stopping(self) -> None:
        """Tell systemd, then stop serving (`stopped` records the components afterwards)."""
        sd_notify("STOPPING=1")
        if self.http.stop():
            try:
                monitor.record(self.daemon.store, "http", Check(
                    Level.OK, "stopped with the daemon", {"port": None}), self.daemon.clock())
            except Exception:  # shutting down: never let a health write skip the cleanup
                log.exception("health_failed")

    def stopped(self, now: float, reason: str) -> None:
        """The last write of a clean stop: the daemon and what it watched are `stopped`, so
        `pipeline health` and `/health` say down, since when, and no stale `ok` is left."""
        monitor.record_stopped(self.daemon.store, now, os.getpid(), reason)

    def waiting(self, now: float, seconds: float) -> None:
        """The loop is about to wait this long: a later wake-up is loop lag."""
        self.expected_wake = now + seconds

    def turn_started(self, now: float) -> None:
        """Measure how late this turn started compared with the planned wake-up."""
        if self.expected_wake is not None:
            self.facts.loop_lag = max(self.facts.loop_lag, now - self.expected_wake)
            self.expected_wake = None

    def polled(self, result: DiscoveryResult, now: float) -> None:
        """Remember the last discovery poll for health and /metrics."""
        self.facts.last_poll_seconds = round(result.seconds, 6)
        self.facts.last_poll_new = result.total
        self.facts.last_poll_at = now

    def check(self, now: float) -> None:
        """Record every component, report counts to systemd, and start a new lag window."""
        daemon = self.daemon
        self.facts.running = len(daemon.runner.running)
        self.facts.skip = frozenset(daemon.failing | ({"disk"} if daemon.disk_full else set()))
        monitor.record_all(daemon.store, daemon.config, self.facts, now)
        self.facts.loop_lag = 0.0
        if not under_systemd():
            return  # the counts below are only for systemd's STATUS line
        counts = daemon.store.trial_counts()
        sd_notify("STATUS=" + ", ".join(
            f"{counts.get(s.value, 0)} {s.value}" for s in (
                TrialStatus.PENDING, TrialStatus.PROCESSING, TrialStatus.DEPLOYED,
                TrialStatus.FAILED)) + f"; {self.facts.running} attempt(s) running")

    def reloading(self) -> None:
        """SIGHUP: systemd's reload protocol wants RELOADING=1 with the monotonic time."""
        usec = int(self.monotonic() * 1_000_000)
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def reloaded(self) -> None:
        """The new config is in use (or the old one kept): ready again."""
        sd_notify("READY=1")
