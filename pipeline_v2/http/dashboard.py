"""The dashboard's GET routes: the pages, their live fragments (`?fragments=1`) and static files.

Readers only: every page reads the read-only connection through the functions the CLI uses
(`status.snapshot`, the store's browse queries, the trial report, `logview`).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from pipeline_v2.errors import NotFoundError
from pipeline_v2.http import pages, trial_pages
from pipeline_v2.http.api import token_of
from pipeline_v2.http.routes import MAX_PAGE, Handler, Request, Response
from pipeline_v2.models import TrialStatus
from pipeline_v2.status import snapshot
from pipeline_v2.store import browse

STATIC = {"dashboard.css": "text/css; charset=utf-8",
          "dashboard.js": "text/javascript; charset=utf-8"}
SHOWN_DEPLOYMENTS = 20
LOG_LINES = 40


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _equity(run_dir: str) -> list[list[Any]]:
    from pipeline_v2.reports.trial import read_equity_log

    return read_equity_log(Path(run_dir))


def _answer(req: Request, title: str, sections: list[tuple[str, str, str, bool]],
            status: int = 200) -> Response:
    """The whole page, or with `?fragments=1` the live sections as JSON {id: inner HTML}."""
    if req.params.get("fragments") == "1":
        live = {sid: inner for sid, _, inner, is_live in sections if is_live}
        body = json.dumps({"sections": live, "updated": pages.when(req.now)})
        return Response(status, body.encode())
    html = pages.frame(title, [(s, h, i) for s, h, i, _ in sections], bool(token_of(req.config)),
                       req.now)
    return Response(status, html.encode(), "text/html; charset=utf-8")


def _error_page(req: Request, status: int, message: str) -> Response:
    return _answer(req, "error", [("error", "", f'<p class="error">{pages.escape(message)}</p>',
                                   False)], status)


def overview(req: Request) -> Response:
    """GET /: health, counts, funnel, running attempts, retries, deployments, recent events."""
    snap = snapshot(req.store, req.config, req.now)
    names = list(req.config.stages)
    shown = snap["deployments"][:SHOWN_DEPLOYMENTS]
    equity = {d["id"]: _equity(d["run_dir"]) for d in shown}
    return _answer(req, "Overview", [
        ("health", "Health", pages.health_section(snap), True),
        ("counts", "Trials", pages.counts_section(snap, names), True),
        ("funnel", "Funnel", pages.funnel_section(snap, names), True),
        ("work", "Work", pages.running_section(browse.running_attempts(req.store),
                                               browse.retry_queue(req.store), req.now), True),
        ("deploys", "Deployments", pages.deployments_table(shown, equity, req.now), True),
        ("recent", "Recent events", pages.events_section(browse.recent_events(req.store),
                                                          req.now), True),
    ])


def _query(req: Request, stages: list[str]) -> tuple[browse.TrialQuery, dict[str, Any]]:
    """The trials page's parameters, checked; ValueError names the bad one."""
    p = {k: v for k, v in req.params.items() if v != "" and k != "fragments"}
    statuses = [s.value for s in TrialStatus]
    if p.get("status") not in (None, *statuses):
        raise ValueError(f'status: unknown status "{p["status"]}" (expected one of '
                         f"{', '.join(statuses)})")
    if p.get("stage") not in (None, *stages):
        raise ValueError(f'stage: unknown stage "{p["stage"]}" (expected one of '
                         f"{', '.join(stages)})")
    sort = p.get("sort", "id")
    if not browse.sort_key_ok(sort, stages):
        raise ValueError(f'sort: unknown sort key "{sort}" (expected one of '
                         f"{', '.join(browse.COLUMNS)} or STAGE.METRIC)")
    numbers = {}
    for name, default, high in (("limit", 50, MAX_PAGE), ("offset", 0, 10**12)):
        value = p.get(name, str(default))
        if not value.isdigit() or int(value) > high or (name == "limit" and int(value) == 0):
            raise ValueError(f'{name}: expected an integer {1 if name == "limit" else 0}-{high}, '
                             f'got "{value}"')
        numbers[name] = int(value)
    query = browse.TrialQuery(
        status=p.get("status"), study=p.get("study"),
        stage_pos=stages.index(p["stage"]) if "stage" in p else None, sort=sort,
        desc=p.get("desc") == "1", limit=numbers["limit"], offset=numbers["offset"])
    return query, p


def trials(req: Request) -> Response:
    """GET /ui/trials: filter by status, study, stage; sort by a column or metric; paged."""
    stages = list(req.config.stages)
    try:
        query, params = _query(req, stages)
    except ValueError as exc:
        return _error_page(req, 400, str(exc))
    page = browse.trials_browse(req.store, query) | {"limit": query.limit,
                                                     "offset": query.offset}
    results = browse.stage_results(req.store, [t.id for t in page["trials"]])
    form = trial_pages.filter_form(params, [s.value for s in TrialStatus],
                                   browse.studies(req.store), stages)
    return _answer(req, "Trials", [
        ("filters", "", form, False),
        ("table", "", trial_pages.trials_table(page, results, params, stages, req.now), True),
    ])


def trial(req: Request) -> Response:
    """GET /ui/trials/{ref}: stages, actions, a link to its report, audit trail, log tail."""
    from pipeline_v2 import logview

    ref = req.groups["ref"]
    try:
        found = req.store.find_trial(ref)
    except NotFoundError as exc:
        return _error_page(req, 404, str(exc))
    stages = req.store.stages_of(found.id)
    events, files = logview.trial_sources(req.store, req.config, ref, None, LOG_LINES)
    tail = logview.interleave([events, *(logview.read_file(*f, keep=LOG_LINES) for f in files)],
                              LOG_LINES)
    sections = [
        ("summary", "", trial_pages.trial_summary(found), True),
        ("actions", "Actions", pages.actions_form([s.name for s in stages],
                                                  bool(token_of(req.config))), False),
        ("stages", "Stages", trial_pages.stages_table(stages, req.now), True),
        ("events", "Audit trail", trial_pages.events_table(req.store.events_of(found.id)), True),
        ("logs", "Log tail", trial_pages.logs_tail(tail), True),
    ]
    link = f"/ui/trials/{pages.escape(found.ref, quote=True)}/report"
    sections.insert(3, ("report", "Report", (  # costly (the study's PBO): its own page, inlined
        f'<div data-load="{link}"><p><a href="{link}">charts and recommendation</a></p></div>'),
        False))
    return _answer(req, f"Trial {found.ref}", sections)


def trial_report(req: Request) -> Response:
    """GET /ui/trials/{ref}/report: equity and drawdown, stress, folds, the recommendation."""
    from pipeline_v2.reports.trial import trial_report as build

    ref = req.groups["ref"]
    report, why = None, None
    try:
        report = build(req.store, req.config, ref, req.now)
    except NotFoundError as exc:
        return _error_page(req, 404, str(exc))
    except Exception as exc:  # a report that cannot be built must not break the page
        why = f"{type(exc).__name__}: {exc}"
    return _answer(req, f"Report of trial {ref}", [
        ("report", "", trial_pages.report_charts(report, why), True)])


def deployments(req: Request) -> Response:
    """GET /ui/deployments: every trader's equity on one chart, restarts marked; the table."""
    rows = req.store.deployment_rows()
    equity = {d["id"]: _equity(d["run_dir"]) for d in rows}
    series = {f"{d['trial']} #{d['id']}": equity[d["id"]] for d in rows}
    restarts = [(_iso(float(t)), f"{d['trial']} restart") for d in rows
                for t in d["crash_times"]]
    return _answer(req, "Deployments", [
        ("equity", "Equity", pages.equity_chart("chart-deployments", series, restarts), True),
        ("deploys", "Traders", pages.deployments_table(rows, equity, req.now), True),
    ])


def static(req: Request) -> Response:
    """GET /static/{name}: the stylesheet and the script, from the package."""
    name = req.groups["name"]
    if name not in STATIC:
        return Response(404, b"not found", "text/plain")
    body = resources.files("pipeline_v2.http").joinpath("static", name).read_bytes()
    return Response(200, body, STATIC[name])


ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    ("GET", re.compile(r"/"), overview),
    ("GET", re.compile(r"/ui"), overview),
    ("GET", re.compile(r"/ui/trials"), trials),
    ("GET", re.compile(r"/ui/trials/(?P<ref>[^/]+)"), trial),
    ("GET", re.compile(r"/ui/trials/(?P<ref>[^/]+)/report"), trial_report),
    ("GET", re.compile(r"/ui/deployments"), deployments),
    ("GET", re.compile(r"/static/(?P<name>[\w.-]+)"), static),
]
