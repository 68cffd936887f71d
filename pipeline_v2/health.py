"""Pure health decisions: each component's facts -> its level, and the components -> overall.

No clock, DB or process here: the daemon's monitor gathers the facts and passes `now`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pipeline_v2.models import DeploymentStatus as D


class Level(str, Enum):
    """One component's health record."""

    OK = "ok"
    RUNNING = "running"  # the daemon's own heartbeat
    WARNING = "warning"
    ERROR = "error"
    STOPPED = "stopped"  # the daemon exited cleanly; a component it no longer watches


class Overall(str, Enum):
    """The pipeline as a whole; `pipeline health` exits with `EXIT_CODES[overall]`."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"


EXIT_CODES = {Overall.HEALTHY: 0, Overall.DEGRADED: 1, Overall.DOWN: 2}
GOOD = frozenset({Level.OK.value, Level.RUNNING.value})
# The daemon writes its heartbeat every health_check_interval; this many missed means down.
MISSED_HEARTBEATS = 3
LIVE_DEPLOYMENTS = frozenset({D.STARTING, D.RUNNING})


@dataclass(frozen=True)
class Check:
    """A component's level and a few words saying why."""

    level: Level
    message: str
    details: dict[str, Any] | None = None


def overall(components: Mapping[str, Mapping[str, Any]], health_interval: float,
            now: float, problems: Sequence[str] = (), unwritable: str | None = None,
            alive: bool = True) -> Overall:
    """healthy | degraded | down, from the components' last records (and trader problems seen
    since the last record).

    `unwritable`: why a live daemon cannot write the state DB (a full disk), if it cannot. Its
    heartbeat then goes stale while it runs: degraded with that reason, not down.
    `alive`: whether a process holds the daemon's lock. A daemon killed without a word
    (SIGKILL, a crash) leaves a fresh `running` heartbeat behind: no lock holder is down at once.
    """
    daemon = components.get("daemon")
    if daemon is None or daemon["status"] == Level.STOPPED.value or not alive:
        return Overall.DOWN
    if now - daemon["checked_at"] > MISSED_HEARTBEATS * health_interval:
        return Overall.DOWN if unwritable is None else Overall.DEGRADED
    if problems or any(c["status"] not in GOOD for c in components.values()):
        return Overall.DEGRADED
    return Overall.HEALTHY


def explain(components: Mapping[str, Mapping[str, Any]], state: Overall | str,
            problems: Sequence[str] = (), unwritable: str | None = None,
            alive: bool = True) -> str:
    """Why the pipeline is in this state, in a few words."""
    daemon = components.get("daemon")
    if state == Overall.DOWN:
        if daemon is None:
            return "no daemon has run yet"
        last = datetime.fromtimestamp(daemon["checked_at"], UTC).isoformat(timespec="seconds")
        if daemon["status"] == Level.STOPPED.value:
            return f"the daemon stopped at {last}"
        if not alive:
            return f"the daemon is not running (no process holds its lock; last heartbeat {last})"
        return "the daemon's heartbeat is stale"
    bad = [] if unwritable is None else [unwritable]
    bad += [f"{name}: {c['message']}" for name, c in components.items()
            if c["status"] not in GOOD]
    if problems:
        bad.append("deployments: " + ", ".join(problems))
    return "; ".join(bad) if bad else "the daemon is running"


def check_discovery(last_poll: float | None, check_interval: float, status: str | None,
                    storage_error: str | None, now: float) -> Check | None:
    """The storage gone, or a poll overdue by three intervals, is an error.

    None keeps the poll's own record (it says what the last poll found).
    """
    if storage_error is not None:
        return Check(Level.ERROR, storage_error)
    if last_poll is None or status is None:
        return None
    if now - last_poll > 3 * check_interval + 1 and status in GOOD:
        return Check(Level.ERROR, f"no poll for {now - last_poll:.0f}s "
                     f"(check_interval {check_interval:g}s)")
    return None


def check_workers(running: int, workers: int, oldest_running_s: float | None,
                  longest_timeout_s: float | None) -> Check:
    """Attempts running past their stage's timeout mean a stuck worker."""
    if (oldest_running_s is not None and longest_timeout_s is not None
            and oldest_running_s > 2 * longest_timeout_s + 60):
        return Check(Level.WARNING, f"an attempt has run {oldest_running_s:.0f}s, past its "
                     f"timeout", {"running": running, "workers": workers})
    return Check(Level.OK, f"{running}/{workers} busy", {"running": running, "workers": workers})


def check_deployments(rows: Sequence[Mapping[str, Any]], heartbeat_timeout: float,
                      now: float) -> Check:
    """Fatal traders, crash loops and stale heartbeats; rows carry trial, status, heartbeat."""
    fatal = [r["trial"] for r in rows if r["status"] == D.FATAL]
    looping = [r["trial"] for r in rows if r.get("crash_loop")]
    stale = [r["trial"] for r in rows if r["status"] == D.RUNNING
             and r.get("last_heartbeat") is not None
             and now - r["last_heartbeat"] > heartbeat_timeout]
    live = sum(1 for r in rows if r["status"] in LIVE_DEPLOYMENTS)
    problems = [f"{label}: {', '.join(map(str, names))}" for label, names in
                (("fatal", fatal), ("crash loop", looping), ("stale heartbeat", stale)) if names]
    details = {"live": live, "fatal": fatal, "crash_loop": looping, "stale": stale}
    if problems:
        return Check(Level.ERROR if fatal else Level.WARNING, "; ".join(problems), details)
    return Check(Level.OK, f"{live} running", details)


def check_disk(used_percent: float, warn_percent: float) -> Check:
    """Warning at `disk_warn_percent`."""
    level = Level.WARNING if used_percent >= warn_percent else Level.OK
    return Check(level, f"{used_percent:.0f}% used", {"used_percent": round(used_percent, 1)})


def check_notifications(configured: bool, backlog: int, failed: int,
                        last_error: str | None) -> Check:
    """A failing webhook (given up events, or a backlog that keeps failing) is a warning."""
    details = {"backlog": backlog, "failed": failed}
    if not configured:
        return Check(Level.OK, "not configured", details)
    if failed or (backlog and last_error):
        return Check(Level.WARNING, f"{backlog} waiting, {failed} given up"
                     + (f"; last error: {last_error}" if last_error else ""), details)
    return Check(Level.OK, f"{backlog} waiting", details)
