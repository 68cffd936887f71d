"""`pipeline report`: the ranked table, plus how the whole search is doing — the funnel,
stage durations, retry and failure rates, throughput over time, the top trials with their DSR,
and each study's PBO."""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import numpy as np

from pipeline_v2.config import Config
from pipeline_v2.models import StageStatus, TrialStatus
from pipeline_v2.report import pipeline_report
from pipeline_v2.reports.study import StudyCache
from pipeline_v2.status import iso
from pipeline_v2.store import Store

TOP = 10
TOP_REASONS = 3
S, T = StageStatus, TrialStatus
FINISHED = (S.PASSED.value, S.REJECTED.value, S.FAILED.value)
DECIDED_EVENTS = ("trial.passed", "trial.rejected", "trial.failed")
BUCKETS_S = (1, 10, 60, 600, 3600, 6 * 3600, 86_400, 7 * 86_400)
MAX_BUCKETS = 24
_GATE_REASON = re.compile(r"^(?P<metric>\S+) \S+ (?P<op><=|>=|<|>|==|!=) (?P<limit>\S+)$")


def reason_kind(reason: str) -> list[str]:
    """"sharpe 0.82 < 1.0; win_rate 0.3 < 0.45" -> the failed gates without the values."""
    kinds = []
    for part in reason.split("; "):
        match = _GATE_REASON.match(part.strip())
        kinds.append(f"{match['metric']} {match['op']} {match['limit']}" if match else part)
    return kinds


def funnel(store: Store, config: Config, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Trials discovered, then per stage: reached, passed, rejected (top reasons), failed."""
    counts = store.trial_counts()
    stages = []
    for name in config.stages:
        mine = [r for r in rows if r["stage_name"] == name]
        status = Counter(r["status"] for r in mine)
        reasons: Counter[str] = Counter()
        for r in mine:
            if r["status"] == S.REJECTED.value and r["reason"]:
                reasons.update(reason_kind(r["reason"]))
        stages.append({
            "stage": name,
            "reached": sum(status[s] for s in (*FINISHED, S.RUNNING.value)),
            "passed": status[S.PASSED.value], "rejected": status[S.REJECTED.value],
            "failed": status[S.FAILED.value], "skipped": status[S.SKIPPED.value],
            "top_reasons": [[k, n] for k, n in reasons.most_common(TOP_REASONS)],
        })
    return {
        "discovered": sum(counts.values()),
        "stages": stages,
        "rejected": counts.get(T.REJECTED.value, 0),
        "failed": counts.get(T.FAILED.value, 0),
        "deployed": store.deployed_trial_count(),
        "validated": counts.get(T.VALIDATED.value, 0),
        "retired": counts.get(T.RETIRED.value, 0),
    }


def _spread(spans: list[float]) -> dict[str, Any]:
    if not spans:
        return {"n": 0, "median": None, "p95": None}
    return {"n": len(spans), "median": float(np.median(spans)),
            "p95": float(np.percentile(spans, 95))}


def durations(rows: list[dict[str, Any]], names: list[str],
              attempts: list[tuple[str, float, str]]) -> dict[str, dict[str, Any]]:
    """Per stage, in seconds: median and p95 of the last attempt of each finished stage row
    (started -> finished), and under `attempts` of every attempt (errors included) from the
    events table."""
    found = {}
    for name in names:
        spans = [r["finished_at"] - r["started_at"] for r in rows
                 if r["stage_name"] == name and r["status"] in FINISHED
                 and r["started_at"] is not None and r["finished_at"] is not None]
        found[name] = _spread(spans) | {
            "attempts": _spread([s for stage, s, _ in attempts if stage == name])}
    return found


def rates(rows: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per stage: the share of attempted stages that needed a retry, and that failed."""
    found = {}
    for name in names:
        tried = [r for r in rows if r["stage_name"] == name and r["attempts"] >= 1]
        done = [r for r in tried if r["status"] in FINISHED]
        found[name] = {
            "attempted": len(tried),
            "retry_rate": sum(r["attempts"] > 1 for r in tried) / len(tried) if tried else None,
            "failure_rate": (sum(r["status"] == S.FAILED.value for r in done) / len(done)
                             if done else None),
        }
    return found


def throughput(store: Store) -> dict[str, Any]:
    """Trials discovered and decided per time bucket (at most 24 buckets)."""
    events = store.event_times(("trial.discovered", *DECIDED_EVENTS))
    if not events:
        return {"bucket_seconds": None, "buckets": []}
    first, last = events[0][0], max(ts for ts, _ in events)
    size = next((b for b in BUCKETS_S if (last - first) / b < MAX_BUCKETS), BUCKETS_S[-1])
    origin = first - first % size
    buckets: dict[int, dict[str, Any]] = {}
    for ts, kind in events:
        k = int((ts - origin) // size)
        row = buckets.setdefault(k, {"start": iso(origin + k * size), "discovered": 0,
                                     "decided": 0})
        row["discovered" if kind == "trial.discovered" else "decided"] += 1
    return {"bucket_seconds": size,
            "buckets": [buckets.get(k) or {"start": iso(origin + k * size), "discovered": 0,
                                           "decided": 0} for k in range(max(buckets) + 1)]}


def full_report(store: Store, config: Config, now: float | None = None,
                studies: StudyCache | None = None) -> dict[str, Any]:
    """The ranked table's keys (`rank_by`, `counts`, `trials`) and the pipeline's health."""
    report = pipeline_report(store, config)
    rows = store.stage_rows()
    names = list(config.stages)
    cache = studies or StudyCache(min_interval=0.0)
    report["generated_at"] = iso(time.time() if now is None else now)
    report["funnel"] = funnel(store, config, rows)
    report["durations"] = durations(rows, names, store.attempt_spans())
    report["rates"] = rates(rows, names)
    report["throughput"] = throughput(store)
    report["top"] = [
        {"trial": r["trial"], "status": r["status"], "rank": r["rank"],
         "deflated_sharpe": (r.get("backtest") or {}).get("deflated_sharpe")}
        for r in report["trials"][:TOP]
    ]
    report["studies"] = {study: cache.get(store, study) for study in store.studies()}
    return report
