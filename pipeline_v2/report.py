"""The pipeline report: every trial's verdict and its key numbers, best first."""

from __future__ import annotations

import math
from typing import Any

from pipeline_v2 import plan
from pipeline_v2.config import Config
from pipeline_v2.store import Store

COLUMNS = {
    "backtest": ("sharpe", "deflated_sharpe", "max_drawdown", "win_rate", "trades"),
    "stress": ("profitable_fraction", "median_sharpe", "worst_drawdown"),
    "paper": ("total_return", "sharpe", "max_drawdown"),
}


def pipeline_report(store: Store, config: Config) -> dict[str, Any]:
    """Counts per status and one row per trial, ranked by the deploy stage's `rank_by`
    (`value` when there is no deploy stage)."""
    found = config.deploy_stage
    rank_by = found[1].rank_by if found else "value"
    rows = []
    for trial in store.list_trials():
        stages = {s.name: s for s in store.stages_of(trial.id)}
        # Rejected stages keep their metrics too: rank everyone by what they scored.
        results = {name: s.results for name, s in stages.items() if s.results}
        dep = store.latest_deployment(trial.id)
        row: dict[str, Any] = {
            "trial": trial.ref, "number": trial.number, "status": trial.status.value,
            "value": trial.value,
            "params": trial.params, "reason": trial.reason,
            "rank": plan.rank_of(rank_by, trial.value, results),
        }
        for name in stages:
            metrics = results.get(name) or {}
            if name == (found[0] if found else None):
                metrics = (dep.metrics if dep and dep.metrics else metrics) or {}
                row["paper"] = {k: metrics.get(k) for k in COLUMNS["paper"]}
                row["deployment"] = None if dep is None else dep.status.value
            elif "profitable_fraction" in (metrics or {}):
                row["stress"] = {k: metrics.get(k) for k in COLUMNS["stress"]}
            elif metrics:
                row.setdefault("backtest", {k: metrics.get(k) for k in COLUMNS["backtest"]})
        rows.append(row)
    rows.sort(key=lambda r: (-r["rank"] if math.isfinite(r["rank"]) else math.inf,
                             r["number"]))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return {"rank_by": rank_by, "counts": counts, "trials": rows}
