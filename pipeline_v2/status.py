"""The status snapshot behind `pipeline status` (and its `--json` form)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline_v2 import health
from pipeline_v2.models import DeploymentStatus, TrialStatus

if TYPE_CHECKING:
    from pipeline_v2.config import Config
    from pipeline_v2.store import Store

# A trader restarting after this many crashes in its window is crash-looping: degraded.
CRASHES_DEGRADE = 2


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


def pipeline_health(components: dict[str, dict[str, Any]], config: Config, now: float,
                    problems: list[str] | None = None) -> str:
    """healthy | degraded | down, from the components' last records and the traders."""
    return health.overall(components, config.daemon.health_check_interval, now,
                          problems or ()).value


def health_detail(components: dict[str, dict[str, Any]], state: str,
                  problems: list[str] | None = None) -> str:
    """Why the pipeline is in this state, in a few words."""
    return health.explain(components, state, problems or ())


def snapshot(store: Store, config: Config, now: float) -> dict[str, Any]:
    """The seed's status keys, every other trial count, per-stage counts and deployments."""
    counts = store.trial_counts()
    components = store.health()
    last_check = store.get_setting("last_check")
    deployments = store.deployment_rows()
    problems = deployment_problems(deployments)
    state = pipeline_health(components, config, now, problems)
    stage_counts = store.stage_counts()  # one grouped query for every stage
    data: dict[str, Any] = {
        "pipeline": state,
        "pipeline_detail": health_detail(components, state, problems),
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
    state = pipeline_health(components, config, now, problems)
    return {
        "status": state,
        "detail": health_detail(components, state, problems),
        "components": {
            name: {"status": c["status"], "message": c["message"],
                   "checked_at": iso(c["checked_at"]), "details": c["details"]}
            for name, c in components.items()
        },
    }
