"""Rich views of the trial and pipeline reports. Builds; never prints (cli.py prints)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from pipeline_v2.render import add_row, report_view, styled
from pipeline_v2.reports.html import fmt, funnel_steps

VERDICT_STYLE = {"deploy": "bold green", "watch": "bold yellow", "reject": "bold red"}


def _kv(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, box=None, title_justify="left")
    table.add_column("")
    table.add_column("", justify="right")
    for key, value in rows:
        add_row(table, key, fmt(value))
    return table


def trial_report_view(report: dict[str, Any]) -> Group:
    """`pipeline report TRIAL`: metrics side by side, then the verdict and why."""
    rec = report["recommendation"]
    head = Text.assemble(f"trial {report['trial']}  ", styled(report["status"]), "   ",
                         (rec["verdict"].upper(), VERDICT_STYLE[rec["verdict"]]))
    parts: list[Any] = [head]
    if report.get("reason"):
        parts.append(Text(report["reason"], style="dim"))
    parts.append(Text(f"optuna objective {fmt(report['value'])}   params {report['params']}"))
    cols = report["columns"]
    table = Table(title="metrics by stage (stress: p5 / median / p95)", box=None,
                  title_justify="left")
    table.add_column("metric")
    for col in cols:
        status = col.get("status")
        note = f" ({status})" if status and status != "passed" else ""
        table.add_column(Text(f"{col['name']}\n{col['kind']}{note}"), justify="right")
    for metric in report["metrics"]:
        add_row(table, metric, *[fmt(c["metrics"].get(metric)) for c in cols])
    parts.append(table)
    parts.append(_kv("degradation: " + report["degradation_definition"],
                     list(report["degradation"].items())))
    con = report["consistency"]
    parts.append(Text.assemble(("consistency ", "bold"), fmt(con["score"]), "  ",
                               (con["definition"], "dim")))
    dsr = report.get("dsr") or {}
    parts.append(_kv("deflated Sharpe ratio and its inputs (sr0: best Sharpe of a zero-skill "
                     "search this size)", list(dsr.items())))
    if report["folds"]:
        folds = Table(title="walk-forward folds", box=None, title_justify="left")
        keys = ("fold", "from", "to", "sharpe", "total_return", "max_drawdown", "trades")
        for key in keys:
            folds.add_column(key, justify="right")
        for fold in report["folds"]:
            add_row(folds, *[fmt(fold[k])[:10] if k in ("from", "to") else fmt(fold[k])
                            for k in keys])
        parts.append(folds)
        parts.append(_kv("fold dispersion", [(k, v) for k, v in report["fold_summary"].items()
                                             if not isinstance(v, dict)]))
    study = report["study_pbo"]
    parts.append(Text(f"study {report['study']}: PBO {fmt(study.get('pbo'))}"
                      + (f" ({study['reason']})" if study.get("reason") else "")))
    warnings = Table(title="warnings", box=None, title_justify="left", show_header=False)
    warnings.add_column("")
    warnings.add_column("")
    for w in report["warnings"] or [{"code": "none", "message": ""}]:
        add_row(warnings, Text(w["code"], style="yellow"), w["message"])
    parts.append(warnings)
    rules = Table(title=f"recommendation: {rec['verdict']} (the most severe rule that fired)",
                  box=None, title_justify="left")
    for column in ("rule", "verdict", "fired", "detail"):
        rules.add_column(column)
    for r in rec["rules"]:
        style = "bold" if r["fired"] else "dim"
        rules.add_row(*[Text(c, style=style) for c in (r["rule"], r["verdict"],
                                                        "yes" if r["fired"] else "-",
                                                        r["detail"] or "")])
    parts.append(rules)
    return Group(*parts)


def pipeline_report_view(report: dict[str, Any]) -> Group:
    """`pipeline report`: the ranked table, then the funnel, timings and each study's PBO."""
    funnel = report["funnel"]
    steps = Table(title="funnel", box=None, title_justify="left")
    for column in ("step", "trials"):
        steps.add_column(column)
    for label, count in funnel_steps(funnel):
        add_row(steps, label, str(count))
    add_row(steps, "rejected / failed / retired",
                  f"{funnel['rejected']} / {funnel['failed']} / {funnel['retired']}")
    stages = Table(title="stages", box=None, title_justify="left")
    for column in ("stage", "passed", "rejected", "failed", "median s", "p95 s", "retry",
                   "fail", "top rejection reasons"):
        stages.add_column(column)
    for s in funnel["stages"]:
        d, r = report["durations"][s["stage"]], report["rates"][s["stage"]]
        add_row(stages, s["stage"], str(s["passed"]), str(s["rejected"]), str(s["failed"]),
                       fmt(d["median"], 3), fmt(d["p95"], 3), fmt(r["retry_rate"], 2),
                       fmt(r["failure_rate"], 2),
                       "; ".join(f"{k} ({n})" for k, n in s["top_reasons"]))
    pbo = Table(title="probability of backtest overfitting (CSCV)", box=None,
                title_justify="left")
    for column in ("study", "PBO", "trials", "bars", "splits", "slope", "P(OOS loss)"):
        pbo.add_column(column)
    for name, st in report["studies"].items():
        add_row(pbo, name, fmt(st.get("pbo"), 3), fmt(st.get("trials")),
                    fmt(st.get("observations")), fmt(st.get("n_combinations")),
                    fmt(st.get("slope"), 3), fmt(st.get("prob_oos_loss"), 3)
                    + (f"  ({st['reason']})" if st.get("reason") else ""))
    tp = report["throughput"]
    decided, buckets = sum(b["decided"] for b in tp["buckets"]), len(tp["buckets"])
    flow = Text(f"throughput: {decided} trial{'s' * (decided != 1)} decided in {buckets} "
                f"bucket{'s' * (buckets != 1)} of {tp['bucket_seconds']:g} s" if buckets
                else "throughput: nothing discovered yet")
    return Group(report_view(report), steps, stages, flow, pbo)
