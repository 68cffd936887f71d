"""The dashboard's HTML: a page is a list of live sections around a fixed frame.

Pure functions from data to HTML strings; every value is escaped here. A section's id names the
fragment the page's script replaces when it polls (`?fragments=1` answers {id: inner HTML}).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any
from urllib.parse import urlencode

from pipeline_v2 import charts

Section = tuple[str, str, str]  # (element id, heading, inner HTML)
ACTIONS = ("retry", "skip", "pause", "resume", "cancel", "deploy", "stop")
NAV = (("/", "Overview"), ("/ui/trials", "Trials"), ("/ui/deployments", "Deployments"))


def text(value: Any) -> str:
    """A cell: floats short, None as a dash, everything escaped."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return escape(f"{value:.4g}")
    return escape(str(value))


def when(ts: float | None) -> str:
    """A timestamp as UTC ISO seconds (the page's script shows it as is)."""
    if ts is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def ago(ts: float | None, now: float) -> str:
    """"12s", "4m", "3h" since (or until, with a minus) a timestamp."""
    if ts is None:
        return "–"
    s = now - ts
    sign, s = ("-" if s < 0 else ""), abs(s)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{sign}{s / size:.0f}{unit}"
    return f"{sign}{s:.0f}s"


def trial_link(ref: str) -> str:
    """A link to a trial's page."""
    return f'<a href="/ui/trials/{escape(ref, quote=True)}">{escape(ref)}</a>'


def badge(status: str) -> str:
    """A status word, coloured by the stylesheet."""
    return f'<span class="badge {escape(status, quote=True)}">{escape(status)}</span>'


def table(head: Sequence[str], rows: Iterable[Sequence[str]], empty: str = "none",
          table_id: str = "") -> str:
    """A table of already-escaped cells (or `empty` when there are no rows)."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{escape(empty)}</p>'
    ident = f' id="{table_id}"' if table_id else ""
    return (f'<div class="scroll"><table{ident}><thead><tr>'
            + "".join(f"<th>{h}</th>" for h in head) + f"</tr></thead><tbody>{body}</tbody>"
            "</table></div>")


def figure(svg: str) -> str:
    """A chart that scales down on a phone."""
    return f'<figure class="chart">{svg}</figure>'


def frame(title: str, sections: list[Section], token_configured: bool, now: float) -> str:
    """A whole page: head, navigation, the sections."""
    nav = "".join(f'<a href="{href}">{name}</a>' for href, name in NAV)
    body = "".join(f'<section id="{sid}" data-live><h2>{escape(head)}</h2>'
                   f'<div class="live">{inner}</div></section>' if head else
                   f'<section id="{sid}" data-live><div class="live">{inner}</div></section>'
                   for sid, head, inner in sections)
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)} · pipeline</title>"
            '<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/dashboard.css">'
            '<script src="/static/dashboard.js" defer></script></head>'
            f'<body data-token="{"1" if token_configured else "0"}">'
            f'<header><b>pipeline</b><nav>{nav}</nav>'
            f'<span class="updated">updated <time id="updated">{when(now)}</time> UTC</span>'
            f"</header><main><h1>{escape(title)}</h1>{body}</main></body></html>")


def sparkline(points: list[list[Any]], width: int = 120, height: int = 24) -> str:
    """A tiny equity line (no axes), or a dash."""
    if len(points) < 2:
        return "–"
    values = [float(v) for _, v in points]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    coords = " ".join(f"{i * width / (len(values) - 1):.1f},{height - (v - lo) / span * height:.1f}"
                      for i, v in enumerate(values))
    return (f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
            f'<polyline fill="none" stroke="#1f5fa8" points="{coords}"/></svg>')


def health_section(snap: dict[str, Any]) -> str:
    """The overall state with its reasons, and every component."""
    rows = [[escape(name), badge(h["status"]), text(h["message"]), text(h["checked_at"])]
            for name, h in snap["health"].items()]
    paused = '<p class="warn">the whole pipeline is paused</p>' if snap["paused_all"] else ""
    return (f'<p class="overall">{badge(snap["pipeline"])} '
            f'<span id="health-detail">{text(snap["pipeline_detail"])}</span></p>{paused}'
            + table(["component", "status", "message", "checked"], rows))


def counts_section(snap: dict[str, Any], stage_names: list[str]) -> str:
    """Trials per status (linking to the filtered table) and stage rows per status."""
    statuses = [k.removeprefix("trials_") for k in snap if k.startswith("trials_")
                and k != "trials_total"]
    cells = "".join(f'<li><a href="/ui/trials?{urlencode({"status": s})}">{escape(s)}</a> '
                    f'<b data-count="{escape(s)}">{snap["trials_" + s]}</b></li>'
                    for s in statuses)
    total = f'<li>total <b data-count="total">{snap["trials_total"]}</b></li>'
    seen = sorted({s for counts in snap["stages"].values() for s in counts})
    rows = [[escape(name), *(f'<span data-stage="{escape(name)}" data-status="{s}">'
                             f'{snap["stages"][name].get(s, 0)}</span>' for s in seen)]
            for name in stage_names]
    return (f'<ul class="counts">{total}{cells}</ul>'
            + table(["stage", *seen], rows, "no stage has run yet"))


def funnel_section(snap: dict[str, Any], stage_names: list[str]) -> str:
    """Discovered, passed each stage, deployed."""
    steps = [("discovered", snap["trials_total"])]
    steps += [(f"passed {n}", snap["stages"].get(n, {}).get("passed", 0)) for n in stage_names]
    steps.append(("deployed now", snap["trials_deployed"]))
    return figure(charts.funnel_chart("chart-funnel", "funnel", steps))


def running_section(running: list[dict[str, Any]], retries: list[dict[str, Any]],
                    now: float) -> str:
    """Attempts running now, then the retry queue with due times."""
    run_rows = [[trial_link(r["trial"]), escape(r["stage"]), text(r["attempt"]),
                 ago(r["started_at"], now)] for r in running]
    retry_rows = [[trial_link(r["trial"]), escape(r["stage"]), text(r["attempts"]),
                   when(r["due_at"]) + f" (in {ago(now, r['due_at'])})", text(r["error"])]
                  for r in retries]
    return ("<h3>Running now</h3>" + table(["trial", "stage", "attempt", "for"], run_rows,
                                          "nothing running", "running")
            + "<h3>Retry queue</h3>" + table(["trial", "stage", "attempts", "due", "last error"],
                                            retry_rows, "no retries waiting", "retries"))


def deployments_table(rows: list[dict[str, Any]], equity: dict[int, list[list[Any]]],
                      now: float) -> str:
    """Each deployment: status, uptime, restarts, equity sparkline, heartbeat age."""
    body = [[trial_link(d["trial"]), badge(d["status"]),
             ago(d["spawned_at"], now) if d["status"] == "running" else "–",
             text(d["restarts"]), sparkline(equity.get(d["id"], [])),
             ago(d["last_heartbeat"], now), text(d["reason"])] for d in rows]
    return table(["trial", "status", "up", "restarts", "equity", "heartbeat", "reason"], body,
                 "no deployments", "deployments")


def events_section(events: list[dict[str, Any]], now: float) -> str:
    """The newest audit events."""
    rows = [[ago(e["ts"], now), trial_link(e["trial"]) if e["trial"] else "–",
             escape(e["kind"]), text(e["stage"]), text(e["message"])] for e in events]
    return table(["ago", "trial", "event", "stage", "message"], rows, "no events yet")


def equity_chart(chart_id: str, equity: dict[str, list[list[Any]]],
                 restarts: Sequence[tuple[str, str]]) -> str:
    """Equity curves on one time axis, restarts marked."""
    return figure(charts.line_chart(chart_id, "paper-trading equity", equity,
                                    markers=restarts))


def actions_form(stage_names: list[str], token_configured: bool) -> str:
    """The action buttons (disabled, saying why, when no token is configured)."""
    if not token_configured:
        return ('<p class="warn" id="actions-off">actions are disabled: no daemon.http_token is '
                "configured (set it, or $PIPELINE_HTTP_TOKEN, and restart the server)</p>")
    options = '<option value="">(failed ones)</option>' + "".join(
        f'<option value="{escape(n, quote=True)}">{escape(n)}</option>' for n in stage_names)
    buttons = "".join(f'<button type="button" data-action="{a}">{a}</button>' for a in ACTIONS)
    return (f'<div class="actions"><label>stage <select id="action-stage">{options}</select>'
            f"</label> {buttons}</div>"
            '<p id="action-result" role="status"></p>'
            '<p class="note">actions need the daemon.http_token; the page asks once and keeps '
            'it for this tab (<button type="button" id="forget-token">forget it</button>)</p>')
