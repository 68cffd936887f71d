"""The status snapshot behind `pipeline status` (and its `--json` form)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline_v2 import health
from pipeline_v2.lock import daemon_pid
from pipeline_v2.models import DeploymentStatus, TrialStatus

if TYPE_CHECKING:
    from pipeline_v2.config import Config
    from pipeline_v2.store import Store

# A trader restarting after this many crashes in its window is crash-looping: degraded.
CRASHES_DEGRADE = 2
# Less free space than this under the state DB: a daemon whose heartbeat is stale cannot write.
FULL_BELOW_BYTES = 1 << 20


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC, or None."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def deployment_problems(rows: list[dict[str, Any]]) -> list[str]:
    """Traders that are not working: each trial's latest deployment gone fatal, or restarting
    after repeated crashes. `rows` are newest first, as `Store.deployment_rows` gives them."""
    problems, seen = [], set()
    for row in rows:
        if row["trial_id"] in seen:
            continue
        seen.add(row["trial_id"])
        crashes = len(row.get("crash_times") or [])
        if row["status"] == DeploymentStatus.FATAL.value:
            problems.append(f"{row['trial']} fatal")
        elif row["status"] == DeploymentStatus.BACKOFF.value and crashes >= CRASHES_DEGRADE:
            problems.append(f"{row['trial']} crash-looping ({crashes} crashes)")
    return problems


def unwritable(components: dict[str, dict[str, Any]], config: Config, now: float) -> str | None:
    """Why the daemon cannot record its heartbeat, when it is stale because the disk under the
    state DB is full while the daemon still holds its lock (it runs, but nothing it writes
    lands: it says so in its log, and this is the only place that can)."""
    daemon = components.get("daemon")
    stale_after = health.MISSED_HEARTBEATS * config.daemon.health_check_interval
    if (daemon is None or daemon["status"] == health.Level.STOPPED.value
            or now - daemon["checked_at"] <= stale_after):
        return None
    pid = daemon_pid(config.state_db_path)
    if pid is None or pid <= 0:
        return None
    folder = config.state_db_path.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= FULL_BELOW_BYTES:
        return None
    return (f"disk: full ({free} bytes free in {folder}): the daemon (pid {pid}) runs but "
            f"cannot write {config.state_db_path.name}; nothing new starts until space returns")


def daemon_alive(config: Config) -> bool:
    """Whether a process holds the daemon's lock on this state DB (probed, not remembered)."""
    return daemon_pid(config.state_db_path) is not None


def pipeline_health(components: dict[str, dict[str, Any]], config: Config, now: float,
                    problems: list[str] | None = None, blocked: str | None = None,
                    alive: bool = True) -> str:
    """healthy | degraded | down, from the components' last records and the traders."""
    return health.overall(components, config.daemon.health_check_interval, now,
                          problems or (), blocked, alive).value


def health_detail(components: dict[str, dict[str, Any]], state: str,
                  problems: list[str] | None = None, blocked: str | None = None,
                  alive: bool = True) -> str:
    """Why the pipeline is in this state, in a few words."""
    return health.explain(components, state, problems or (), blocked, alive)


def snapshot(store: Store, config: Config, now: float) -> dict[str, Any]:
    """The seed's status keys, every other trial count, per-stage counts and deployments."""
    counts = store.trial_counts()
    components = store.health()
    last_check = store.get_setting("last_check")
    deployments = store.deployment_rows()
    problems = deployment_problems(deployments)
    blocked = unwritable(components, config, now)
    alive = daemon_alive(config)
    state = pipeline_health(components, config, now, problems, blocked, alive)
    stage_counts = store.stage_counts()  # one grouped query for every stage
    data: dict[str, Any] = {
        "pipeline": state,
        "pipeline_detail": health_detail(components, state, problems, blocked, alive),
        **{f"trials_{status.value}": counts.get(status.value, 0) for status in TrialStatus},
        "trials_total": sum(counts.values()),
        "last_check": iso(float(last_check)) if last_check else None,
        "paused_all": store.get_setting("paused_all") == "1",
        "stages": {name: stage_counts.get(name, {}) for name in config.stages},
        "deployments": deployments,
        "health": {
            name: {
                "status": h["status"],
                "message": h["message"],
                "checked_at": iso(h["checked_at"]),
            }
            for name, h in components.items()
        },
    }
    return data


def health_report(store: Store, config: Config, now: float) -> dict[str, Any]:
    """`pipeline health --json` and `GET /health`: the overall state and every component."""
    components = store.health()
    problems = deployment_problems(store.deployment_rows())
    blocked = unwritable(components, config, now)
    alive = daemon_alive(config)
    state = pipeline_health(components, config, now, problems, blocked, alive)
    return {
        "status": state,
        "detail": health_detail(components, state, problems, blocked, alive),
        "components": {
            name: {"status": c["status"], "message": c["message"],
                   "checked_at": iso(c["checked_at"]), "details": c["details"]}
            for name, c in components.items()
        },
    }
