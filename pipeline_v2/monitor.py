"""The daemon's health monitor: gather each component's facts, decide (health.py), record.

Runs on the loop every `health_check_interval`; each record is one short write.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

from pipeline_v2 import health
from pipeline_v2.config import Config, DeployStageConfig
from pipeline_v2.health import Check, Level
from pipeline_v2.optuna_source import storage_file
from pipeline_v2.store import Store, observe

METRICS_SETTING = "daemon_metrics"


@dataclass
class LoopFacts:
    """What only the daemon's memory knows: loop lag, the last poll, the HTTP listener."""

    running: int = 0
    loop_lag: float = 0.0
    last_poll_seconds: float | None = None
    last_poll_new: int = 0
    last_poll_at: float | None = None
    http: Check | None = None
    skip: frozenset[str] = frozenset()  # failing in the daemon's guard: its record stands
    extra: dict[str, Any] = field(default_factory=dict)


def storage_missing(url: str) -> str | None:
    """A file-backed storage whose file is gone (noticed here between discovery polls)."""
    path = storage_file(url)
    if path is None or os.path.exists(path):
        return None
    return f'optuna.storage: the storage file "{path}" is missing'


def http_check(address: str | None, bound: tuple[str, int] | None, error: str | None) -> Check:
    """The HTTP listener: off, listening (with the port, for tests and scripts), or failing."""
    if address is None:
        return Check(Level.OK, "off (daemon.http is null)", {"port": None})
    if error is not None:
        return Check(Level.ERROR, f"cannot listen on {address}: {error}", {"port": None})
    assert bound is not None
    return Check(Level.OK, f"listening on {bound[0]}:{bound[1]}",
                 {"host": bound[0], "port": bound[1]})


def record(store: Store, name: str, check: Check, now: float,
           skip: frozenset[str] = frozenset()) -> None:
    """Write one component's record (unless a failure the daemon recorded must stand)."""
    if name not in skip:
        store.set_health(name, check.level.value, check.message, now, check.details)


def record_all(store: Store, config: Config, facts: LoopFacts, now: float) -> None:
    """Check and record every component but the daemon's own heartbeat."""
    with store.transaction():  # one commit for every component
        _record_all(store, config, facts, now)


def _record_all(store: Store, config: Config, facts: LoopFacts, now: float) -> None:
    daemon = config.daemon
    components = store.health()
    poll = components.get("discovery")
    stale = health.check_discovery(facts.last_poll_at, daemon.check_interval,
                                   poll["status"] if poll else None,
                                   storage_missing(config.storage_url), now)
    if stale is not None:
        record(store, "discovery", stale, now, facts.skip)
    oldest = observe.oldest_running_start(store)
    timeouts = [s.timeout_seconds for s in config.stages.values()
                if getattr(s, "timeout_seconds", None)]
    record(store, "workers", health.check_workers(
        facts.running, daemon.workers, None if oldest is None else now - oldest,
        max(timeouts) if timeouts else None), now, facts.skip)
    deploy = config.deploy_stage
    timeout = deploy[1].heartbeat_timeout if deploy and isinstance(
        deploy[1], DeployStageConfig) else 120.0
    record(store, "deployments", health.check_deployments(
        observe.deployment_facts(store), timeout, now), now, facts.skip)
    error = observe.state_db_ok(store)
    record(store, "state_db", Check(Level.ERROR, error) if error else Check(
        Level.OK, f"{config.state_db_path.name} answers"), now, facts.skip)
    usage = shutil.disk_usage(config.state_db_path.parent)
    record(store, "disk", health.check_disk(100 * usage.used / usage.total,
                                            daemon.disk_warn_percent), now, facts.skip)
    backlog, failed, last_error = observe.outbox_state(store)
    configured = bool(config.notify.webhook or config.notify.command)
    record(store, "notifications",
           health.check_notifications(configured, backlog, failed, last_error), now, facts.skip)
    if facts.http is not None:
        record(store, "http", facts.http, now, facts.skip)
    store.set_setting(METRICS_SETTING, json.dumps({
        "loop_lag_seconds": facts.loop_lag, "last_poll_seconds": facts.last_poll_seconds,
        "last_poll_new": facts.last_poll_new, "last_poll_at": facts.last_poll_at,
    }))


def record_stopped(store: Store, now: float, pid: int, reason: str) -> None:
    """A clean stop: the daemon `stopped` at `now`, and every component it watched and last found
    fine `stopped` too (nobody watches it now), in one commit. A component with a problem keeps
    it (the last thing known, for the post-mortem); each keeps the time of its last check."""
    with store.transaction():
        for name, comp in store.health().items():
            if name != "daemon" and comp["status"] in health.GOOD:
                store.set_health(name, Level.STOPPED.value,
                                 f"not watched: the daemon stopped (last check: {comp['message']})",
                                 comp["checked_at"], comp["details"])
        store.set_health("daemon", Level.STOPPED.value, f"pid {pid} stopped ({reason})", now,
                         {"pid": pid, "stopped_at": now, "reason": reason})


def loop_metrics(store: Store) -> dict[str, Any]:
    """What the daemon last recorded about its loop (for /metrics)."""
    text = store.get_setting(METRICS_SETTING)
    return json.loads(text) if text else {}
