"""Turn results into rich renderables (JSON: render_json, re-exported). Builds; never prints."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from pipeline_v2.models import StageRun, StageStatus, Trial
from pipeline_v2.render_json import jsonable
from pipeline_v2.render_json import stream_json as stream_json  # re-exported
from pipeline_v2.render_json import to_json as to_json  # re-exported
from pipeline_v2.status import iso

STATUS_STYLE = {
    "passed": "green",
    "validated": "bold green",
    "deployed": "cyan",
    "running": "cyan",
    "processing": "cyan",
    "pending": "white",
    "rejected": "yellow",
    "failed": "red",
    "fatal": "red",
    "crashed": "red",
    "cancelled": "dim",
    "skipped": "dim",
    "paused": "magenta",
    "retired": "dim",
    "healthy": "green",
    "degraded": "yellow",
    "down": "red",
    "ok": "green",
}


def add_row(table: Table, *cells: Any) -> None:
    """Add a row whose plain strings stay plain: user data ("[/]" in a name) is never markup."""
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def styled(status: str) -> Text:
    """A status word in its colour."""
    return Text(status, style=STATUS_STYLE.get(status, ""))


def number(value: Any, digits: int = 4) -> str:
    """A metric for a table cell."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def ago(ts: float | None, now: float | None = None) -> str:
    """`12s ago`, `3m ago`, `in 5s`."""
    if ts is None:
        return "-"
    delta = (now or time.time()) - ts
    suffix = "ago" if delta >= 0 else "from now"
    delta = abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta / size:.0f}{unit} {suffix}"
    return f"{delta:.0f}s {suffix}"


def status_view(data: dict[str, Any]) -> Group:
    """`pipeline status` as tables."""
    head = Text.assemble(
        "pipeline ",
        styled(data["pipeline"]),
        f" ({data['pipeline_detail']})",
        f"   trials {data['trials_total']}   last check {data['last_check'] or 'never'}",
        "   [all paused]" if data.get("paused_all") else "",
    )
    counts = Table(title="trials", box=None)
    counts.add_column("status")
    counts.add_column("count", justify="right")
    for key, value in data.items():
        if key.startswith("trials_") and key != "trials_total":
            add_row(counts, styled(key.removeprefix("trials_")), str(value))
    stages = Table(title="stages", box=None)
    stages.add_column("stage")
    statuses = [status.value for status in StageStatus]
    for status in statuses:
        stages.add_column(status, justify="right")
    for name, by_status in data["stages"].items():
        add_row(stages, name, *(str(by_status.get(s, 0)) for s in statuses))
    parts: list[Any] = [head, counts, stages]
    if data["deployments"]:
        parts.append(deployments_table(data["deployments"]))
    return Group(*parts)


def deployments_table(rows: list[dict[str, Any]]) -> Table:
    """Deployments with pid, restarts and their latest metrics."""
    table = Table(title="deployments", box=None)
    for column in ("trial", "status", "pid", "restarts", "equity", "return", "sharpe", "heartbeat"):
        table.add_column(column)
    for row in rows:
        metrics = row.get("metrics") or {}
        add_row(
            table,
            row["trial"] + (" (pinned)" if row.get("pinned") else ""),
            styled(row["status"]),
            str(row.get("pid") or "-"),
            str(row.get("restarts", 0)),
            number(metrics.get("equity")),
            number(metrics.get("total_return")),
            number(metrics.get("sharpe")),
            ago(row.get("last_heartbeat")),
        )
    return table


def trials_table(trials: list[Trial]) -> Table:
    """`pipeline trials`."""
    table = Table(box=None)
    for column in ("trial", "status", "value", "params", "reason"):
        table.add_column(column, overflow="fold")
    for trial in trials:
        params = ", ".join(f"{k}={number(v)}" for k, v in trial.params.items())
        add_row(
            table,
            trial.ref, styled(trial.status.value), number(trial.value), params, trial.reason or ""
        )
    return table


def trial_view(trial: Trial, stages: list[StageRun], events: list[dict[str, Any]]) -> Group:
    """`pipeline show TRIAL`: the trial, its stages and its audit trail."""
    head = Text.assemble(
        (trial.ref, "bold"),
        "  ",
        styled(trial.status.value),
        f"  value {number(trial.value)}  model_dir {trial.model_dir}",
        f"\nparams {json.dumps(jsonable(trial.params))}",
        f"\nflags {', '.join(trial.flags)}" if trial.flags else "",
        "\npinned: deployed by hand, not displaced by promotion" if trial.pinned else "",
        f"\nreason {trial.reason}" if trial.reason else "",
    )
    table = Table(title="stages", box=None)
    for column in ("stage", "status", "attempts", "next attempt", "result"):
        table.add_column(column, overflow="fold")
    for stage in stages:
        result = stage_summary(stage)
        if stage.results and not result and stage.status in VERDICTS:
            result = ", ".join(
                f"{k}={number(v)}" for k, v in stage.results.items() if isinstance(v, int | float)
            )
        add_row(
            table,
            stage.name,
            styled(stage.status.value),
            str(stage.attempts),
            ago(stage.next_attempt_at) if stage.status == StageStatus.PENDING else "-",
            result,
        )
    trail = Table(title="events", box=None)
    for column in ("time", "event", "stage", "message"):
        trail.add_column(column, overflow="fold")
    for event in events:
        add_row(
            trail,
            iso(event["ts"]) or "", event["kind"], event["stage"] or "", event["message"] or ""
        )
    return Group(head, table, trail)


# Statuses whose row's metrics are the current verdict's (a skipped or waiting stage has none).
VERDICTS = frozenset({StageStatus.PASSED, StageStatus.REJECTED, StageStatus.FAILED})


def stage_summary(stage: StageRun) -> str:
    """A stage's current state in a few words; earlier attempts are in the events."""
    status = stage.status.value
    if status == "pending" and stage.error_message:
        return f"attempt {stage.attempts} failed: {stage.error_message}"
    if status in ("passed", "running"):
        return ""
    return stage.reason or stage.error_message or ""


def metrics_table(metrics: dict[str, Any]) -> Table:
    """Backtest metrics, one per row."""
    table = Table(box=None, show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if not isinstance(value, dict | list):  # per-fold rows and DSR inputs: see report
            add_row(table, key, number(value, 6))
    return table


def report_view(report: dict[str, Any]) -> Group:
    """`pipeline report`: counts, then one row per trial, best first."""
    counts = "   ".join(f"{k} {v}" for k, v in sorted(report["counts"].items())) or (
        "no trials yet")
    table = Table(title=Text(f"trials ranked by {report['rank_by']}"), box=None)
    # The trial is what a user types next: never cut it; the reason gives way instead.
    widest = max((len(row["trial"]) for row in report["trials"]), default=5)
    table.add_column("trial", no_wrap=True, min_width=widest)
    for column in ("status", "bt sharpe", "DSR", "bt maxDD", "stress win%",
                   "paper ret", "paper sharpe"):
        table.add_column(column, no_wrap=True)
    table.add_column("why", overflow="ellipsis", no_wrap=True, max_width=48)
    for row in report["trials"]:
        bt, st, pp = row.get("backtest") or {}, row.get("stress") or {}, row.get("paper") or {}
        win = st.get("profitable_fraction")
        add_row(
            table,
            row["trial"], styled(row["status"]), number(bt.get("sharpe"), 3),
            number(bt.get("deflated_sharpe"), 3), number(bt.get("max_drawdown"), 3),
            "-" if win is None else f"{100 * win:.0f}%", number(pp.get("total_return"), 3),
            number(pp.get("sharpe"), 3), row["reason"] or "",
        )
    return Group(Text(counts), table)

