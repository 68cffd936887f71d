"""Self-contained HTML for both reports: one XHTML-compatible file, inline CSS and SVG charts,
no script and nothing fetched; laid out to print (each chart stays on one page)."""

from __future__ import annotations

import math
import re
from typing import Any
from xml.sax.saxutils import escape

from pipeline_v2 import charts

CSS = """
body { font: 13px/1.45 system-ui, sans-serif; color: #111827; max-width: 980px;
       margin: 24px auto; padding: 0 16px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; border-bottom: 1px solid #d1d5db; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid #e5e7eb; padding: 3px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.verdict { font-size: 18px; font-weight: bold; padding: 6px 12px; display: inline-block; }
.deploy { background: #dcfce7; } .watch { background: #fef9c3; } .reject { background: #fee2e2; }
.fired { font-weight: bold; } .quiet { color: #6b7280; }
.definition { color: #374151; font-style: italic; }
figure { margin: 12px 0; page-break-inside: avoid; break-inside: avoid; }
@media print { body { margin: 0; max-width: none; font-size: 10pt; }
               h2 { page-break-after: avoid; } .chart { max-width: 100%; height: auto; } }
""" + charts.STYLE


def fmt(value: Any, digits: int = 4) -> str:
    """A cell: numbers short, dicts (stress p5/median/p95) joined, missing as a dash."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " / ".join(fmt(value.get(k), digits) for k in ("p5", "median", "p95"))
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}g}"
    return str(value)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(fmt(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _figure(svg: str) -> str:
    return f"<figure>{svg}</figure>"


def _page(title: str, body: list[str]) -> str:
    return ('<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>\n'
            '<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head>'
            '<meta charset="utf-8"/>'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")


def chart_id(name: str) -> str:
    """A safe element id."""
    return "chart-" + re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def pbo_chart(study: dict[str, Any], element_id: str, name: str) -> str:
    """The logit histogram of a study's CSCV splits (or why there is none)."""
    hist = study.get("logit_histogram") or {"edges": [], "counts": []}
    pbo = study.get("pbo")
    title = (f"{name}: PBO {pbo:.2f} (logits <= 0 are overfit splits)" if pbo is not None
             else f"{name}: PBO not computed ({study.get('reason', 'no data')})")
    return charts.histogram_chart(element_id, title, hist["edges"], hist["counts"])


def trial_html(report: dict[str, Any]) -> str:
    """`pipeline report TRIAL --html`."""
    rec = report["recommendation"]
    cols = report["columns"]
    body = [f"<h1>Trial {escape(report['trial'])} <small>({escape(report['status'])})</small>"
            "</h1>",
            f'<p class="verdict {rec["verdict"]}">{rec["verdict"]}</p>']
    if report.get("reason"):
        body.append(f"<p>{escape(report['reason'])}</p>")
    body.append(f"<p>optuna objective {escape(fmt(report['value']))}; params "
                f"{escape(str(report['params']))}</p>")
    body.append("<h2>Metrics by stage</h2>")
    rows = [[m, *[c["metrics"].get(m) for c in cols]] for m in report["metrics"]]
    body.append(_table(["metric", *[f"{c['name']} ({c['kind']}"
                                    + (f", {c['status']}" if c.get("status", "passed") != "passed"
                                       else "") + ")" for c in cols]], rows))
    body.append("<p>stress cells: p5 / median / p95 (Sharpe), median (return), worst "
                "(drawdown); optuna: the in-sample objective and user_attrs.</p>")
    equity = report["equity"]
    every = [str(t) for pts in equity.values() for t, _ in pts]
    domain = (min(every), max(every)) if every else None
    body.append("<h2>Equity and drawdown</h2>")
    body.append(_figure(charts.line_chart("chart-equity", "equity", equity, domain)))
    body.append(_figure(charts.line_chart(
        "chart-drawdown", "drawdown (fraction below the running peak)",
        {k: charts.drawdown_points(v) for k, v in equity.items()}, domain)))
    deg = report["degradation"]
    body.append("<h2>Degradation and consistency</h2>")
    body.append(_table(["from -> to", "Sharpe lost"], [[k, v] for k, v in deg.items()]))
    body.append(f'<p class="definition">degradation = {escape(report["degradation_definition"])}'
                "</p>")
    con = report["consistency"]
    body.append(f"<p>consistency score: <b>{escape(fmt(con['score']))}</b></p>"
                f'<p class="definition">{escape(con["definition"])}</p>')
    dsr = report.get("dsr") or {}
    body.append("<h2>Deflated Sharpe Ratio</h2>")
    body.append(_table(["input", "value"], [[k, v] for k, v in dsr.items()]))
    body.append('<p class="definition">SR0: the Sharpe ratio the best of N zero-skill trials '
                "reaches by luck; DSR: the probability that the true Sharpe exceeds SR0.</p>")
    folds = report["folds"]
    body.append("<h2>Walk-forward folds</h2>")
    body.append(_figure(charts.bar_chart(
        "chart-folds", "Sharpe per test fold", [f"fold {f['fold']}" for f in folds],
        [f["sharpe"] for f in folds])))
    if folds:
        keys = ["fold", "from", "to", "sharpe", "total_return", "max_drawdown", "trades"]
        body.append(_table(keys, [[f[k] for k in keys] for f in folds]))
        body.append(_table(["dispersion", "value"],
                           [[k, v] for k, v in report["fold_summary"].items()
                            if not isinstance(v, dict)]))
    hist = report.get("stress_histogram") or {"edges": [], "counts": []}
    body.append("<h2>Stress</h2>")
    body.append(_figure(charts.histogram_chart("chart-stress", "Sharpe across stress paths",
                                               hist["edges"], hist["counts"])))
    body.append("<h2>Study</h2>")
    body.append(_figure(pbo_chart(report["study_pbo"], "chart-pbo",
                                  f"study {report['study']}")))
    body.append("<h2>Warnings</h2><ul>" + "".join(
        f"<li><b>{escape(w['code'])}</b>: {escape(w['message'])}</li>"
        for w in report["warnings"]) + "</ul>" if report["warnings"] else "<p>none</p>")
    body.append("<h2>Recommendation rules</h2>")
    body.append(_table(["rule", "verdict", "fired", "meaning", "detail"],
                       [[r["rule"], r["verdict"], "yes" if r["fired"] else "no", r["meaning"],
                         r["detail"]] for r in rec["rules"]]))
    return _page(f"trial {report['trial']}", body)


def funnel_steps(funnel: dict[str, Any]) -> list[tuple[str, int]]:
    """The funnel's bars: discovered, passed each stage, deployed, validated."""
    steps = [("discovered", funnel["discovered"])]
    steps += [(f"passed {s['stage']}", s["passed"]) for s in funnel["stages"]]
    return steps + [("deployed", funnel["deployed"]), ("validated", funnel["validated"])]


def pipeline_html(report: dict[str, Any]) -> str:
    """`pipeline report --html`."""
    funnel = report["funnel"]
    body = ["<h1>Pipeline report</h1>", f"<p>generated {escape(report['generated_at'])}</p>",
            "<h2>Funnel</h2>", _figure(charts.funnel_chart("chart-funnel", "trials per step",
                                                            funnel_steps(funnel)))]
    body.append(_table(["stage", "reached", "passed", "rejected", "failed", "top reasons"],
                       [[s["stage"], s["reached"], s["passed"], s["rejected"], s["failed"],
                         "; ".join(f"{k} ({n})" for k, n in s["top_reasons"])]
                        for s in funnel["stages"]]))
    body.append(_table(["rejected", "failed", "deployed", "validated", "retired"],
                       [[funnel[k] for k in ("rejected", "failed", "deployed", "validated",
                                             "retired")]]))
    body.append("<h2>Stage durations and rates</h2>")
    body.append(_table(["stage", "n", "median s", "p95 s", "attempts", "attempt median s",
                        "attempt p95 s", "retry rate", "failure rate"],
                       [[name, d["n"], d["median"], d["p95"], d["attempts"]["n"],
                         d["attempts"]["median"], d["attempts"]["p95"],
                         report["rates"][name]["retry_rate"],
                         report["rates"][name]["failure_rate"]]
                        for name, d in report["durations"].items()]))
    body.append('<p class="definition">n, median, p95: the last attempt of each finished stage; '
                "attempts: every attempt, errors included (events table).</p>")
    tp = report["throughput"]
    body.append("<h2>Throughput</h2>")
    body.append(_figure(charts.bar_chart(
        "chart-throughput", f"trials decided per {tp['bucket_seconds']} s",
        [b["start"][11:19] for b in tp["buckets"]], [b["decided"] for b in tp["buckets"]])))
    body.append(f"<h2>Top trials by {escape(report['rank_by'])}</h2>")
    body.append(_table(["trial", "status", "rank", "DSR"],
                       [[t["trial"], t["status"], t["rank"], t["deflated_sharpe"]]
                        for t in report["top"]]))
    body.append("<h2>Probability of backtest overfitting</h2>")
    for name, study in report["studies"].items():
        body.append(_figure(pbo_chart(study, chart_id(f"pbo-{name}"), f"study {name}")))
    return _page("pipeline report", body)
