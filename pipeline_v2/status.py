"""The status snapshot shared by `pipeline status`, `pipeline health` and `GET /status`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipeline_v2.config import Config
from pipeline_v2.models import TrialStatus
from pipeline_v2.store import Store

# The daemon writes its heartbeat every health_check_interval; this many missed means down.
MISSED_HEARTBEATS = 3


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC, or None."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def pipeline_health(health: dict[str, dict[str, Any]], config: Config, now: float) -> str:
    """healthy | degraded | down, from the components' last records."""
    daemon = health.get("daemon")
    stale_after = MISSED_HEARTBEATS * config.daemon.health_check_interval
    if daemon is None or daemon["status"] == "stopped" or now - daemon["checked_at"] > stale_after:
        return "down"
    if any(h["status"] not in ("ok", "running") for h in health.values()):
        return "degraded"
    return "healthy"


def health_detail(health: dict[str, dict[str, Any]], state: str) -> str:
    """Why the pipeline is in this state, in a few words."""
    daemon = health.get("daemon")
    if state == "down":
        if daemon is None:
            return "no daemon has run yet"
        return "the daemon is stopped" if daemon["status"] == "stopped" else (
            "the daemon's heartbeat is stale")
    bad = [f"{name}: {h['message']}" for name, h in health.items()
           if h["status"] not in ("ok", "running")]
    return "; ".join(bad) if bad else "the daemon is running"


def snapshot(store: Store, config: Config, now: float) -> dict[str, Any]:
    """The seed's status keys, every other trial count, per-stage counts and deployments."""
    counts = store.trial_counts()
    health = store.health()
    last_check = store.get_setting("last_check")
    state = pipeline_health(health, config, now)
    data: dict[str, Any] = {
        "pipeline": state,
        "pipeline_detail": health_detail(health, state),
        **{f"trials_{status.value}": counts.get(status.value, 0) for status in TrialStatus},
        "trials_total": sum(counts.values()),
        "last_check": iso(float(last_check)) if last_check else None,
        "paused_all": store.get_setting("paused_all") == "1",
        "stages": {name: store.stage_counts().get(name, {}) for name in config.stages},
        "deployments": store.deployment_rows(),
        "health": {
            name: {
                "status": h["status"],
                "message": h["message"],
                "checked_at": iso(h["checked_at"]),
            }
            for name, h in health.items()
        },
    }
    return data
