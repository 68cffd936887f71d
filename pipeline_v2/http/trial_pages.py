"""The dashboard's trial HTML: the filterable, sortable table and one trial's page."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import urlencode

from pipeline_v2 import charts
from pipeline_v2.http.pages import badge, figure, table, text, trial_link, when
from pipeline_v2.models import StageRun, Trial

METRIC_KEYS = ("sharpe", "total_return", "max_drawdown", "median_sharpe", "win_rate")


def _href(params: dict[str, Any], **change: Any) -> str:
    merged = {k: v for k, v in {**params, **change}.items() if v not in (None, "")}
    return "/ui/trials?" + urlencode(merged)


def _select(name: str, options: list[str], chosen: str | None) -> str:
    opts = '<option value="">any</option>' + "".join(
        f'<option{" selected" if o == chosen else ""}>{escape(o)}</option>' for o in options)
    return f'<label>{name} <select name="{name}">{opts}</select></label>'


def filter_form(params: dict[str, Any], statuses: list[str], studies: list[str],
                stages: list[str]) -> str:
    """A GET form (works without JavaScript): status, study, current stage; keeps the sort."""
    keep = "".join(f'<input type="hidden" name="{k}" value="{escape(str(params[k]), quote=True)}">'
                   for k in ("sort", "desc", "limit") if params.get(k))
    return ('<form class="filters" method="get" action="/ui/trials">'
            + _select("status", statuses, params.get("status"))
            + _select("study", studies, params.get("study"))
            + _select("stage", stages, params.get("stage"))
            + f'{keep}<button type="submit">filter</button></form>')


def metric_columns(results: dict[int, dict[str, dict[str, Any]]], stages: list[str]
                   ) -> list[tuple[str, str]]:
    """(stage, metric) pairs some row on this page has, in stage order."""
    return [(s, m) for s in stages for m in METRIC_KEYS
            if any(m in (r.get(s) or {}).get("results", {}) for r in results.values())]


def trials_table(page: dict[str, Any], results: dict[int, dict[str, dict[str, Any]]],
                 params: dict[str, Any], stages: list[str], now: float) -> str:
    """One page of trials: sortable headers, each stage's status, its metrics, paging links."""
    sort, desc = params.get("sort") or "id", params.get("desc") == "1"
    metrics = metric_columns(results, stages)

    def head(key: str, label: str) -> str:
        flip = "" if (sort == key and desc) else "1"
        arrow = (" ▼" if desc else " ▲") if sort == key else ""
        return (f'<a href="{escape(_href(params, sort=key, desc=flip, offset=None), quote=True)}"'
                f' data-sort="{escape(key, quote=True)}">{escape(label)}{arrow}</a>')

    heads = [head("number", "trial"), head("status", "status"), "stage", head("value", "value"),
             *(escape(s) for s in stages), *(head(f"{s}.{m}", f"{s} {m}") for s, m in metrics),
             head("updated", "updated")]
    rows = []
    for trial in page["trials"]:
        mine = results.get(trial.id, {})
        pos = page["positions"][trial.id]
        current = stages[pos] if 0 <= pos < len(stages) else "–"
        rows.append([
            trial_link(trial.ref), badge(trial.status.value), escape(current), text(trial.value),
            *(badge(mine[s]["status"]) if s in mine else "–" for s in stages),
            *(text((mine.get(s) or {}).get("results", {}).get(m)) for s, m in metrics),
            when(trial.updated_at)])
    limit, offset, total = page["limit"], page["offset"], page["total"]
    last = min(offset + limit, total)
    links = []
    if offset > 0:
        links.append(f'<a rel="prev" href="{escape(_href(params, offset=max(0, offset - limit)))}"'
                     ">‹ previous</a>")
    if last < total:
        links.append(f'<a rel="next" href="{escape(_href(params, offset=last))}">next ›</a>')
    shown = f"{offset + 1}–{last}" if total else "0"
    return (f'<p class="paging">trials <b id="shown">{shown}</b> of <b id="total">{total}</b> '
            + " ".join(links) + "</p>"
            + table(heads, rows, "no trial matches", "trials"))


def trial_summary(trial: Trial) -> str:
    """Status, objective, params, flags and the reason it stopped, if any."""
    params = ", ".join(f"{escape(str(k))}={text(v)}" for k, v in trial.params.items())
    reason = f'<p class="reason">{escape(trial.reason)}</p>' if trial.reason else ""
    return (f'<p>{badge(trial.status.value)} objective <b>{text(trial.value)}</b>'
            f"{' · pinned' if trial.pinned else ''}</p><p>params {params or '–'}</p>{reason}")


def stages_table(stages: list[StageRun], now: float) -> str:
    """Each stage: status, attempts, times, metrics, the gate verdict or error."""
    rows = []
    for s in stages:
        results = s.results or {}
        shown = ", ".join(f"{escape(str(k))} {text(v)}" for k, v in results.items()
                          if isinstance(v, int | float | str | type(None)))
        verdict = s.reason or ""
        error = s.error_message or ""
        rows.append([escape(s.name), badge(s.status.value), text(s.attempts),
                     when(s.started_at), when(s.finished_at), shown or "–",
                     escape(verdict) or "–",
                     f'<span class="error">{escape(error)}</span>' if error else "–"])
    return table(["stage", "status", "attempts", "started", "finished", "metrics",
                  "gate verdict", "error"], rows, "no stages", "stages")


def events_table(events: list[dict[str, Any]]) -> str:
    """The trial's audit trail, oldest first."""
    rows = [[when(e["ts"]), escape(e["kind"]), text(e.get("stage")),
             text(f"{e.get('old_status') or ''} → {e.get('new_status') or ''}"
                  if e.get("old_status") or e.get("new_status") else None),
             text(e.get("message"))] for e in events]
    return table(["when", "event", "stage", "change", "message"], rows, "no events", "events")


def report_charts(report: dict[str, Any] | None, error: str | None) -> str:
    """Equity and drawdown, stress histogram, folds, from the trial's report."""
    if report is None:
        return f'<p class="empty">no report: {escape(error or "unknown")}</p>'
    equity = report["equity"]
    every = [str(t) for pts in equity.values() for t, _ in pts]
    domain = (min(every), max(every)) if every else None
    folds = report["folds"]
    hist = report.get("stress_histogram") or {"edges": [], "counts": []}
    verdict = report["recommendation"]["verdict"]
    return "".join([
        f'<p>recommendation: <b class="verdict">{escape(verdict)}</b></p>',
        figure(charts.line_chart("chart-equity", "equity", equity, domain)),
        figure(charts.line_chart("chart-drawdown", "drawdown (fraction below the running peak)",
                                 {k: charts.drawdown_points(v) for k, v in equity.items()},
                                 domain)),
        figure(charts.histogram_chart("chart-stress", "Sharpe across stress paths",
                                      hist["edges"], hist["counts"])),
        figure(charts.bar_chart("chart-folds", "Sharpe per test fold",
                                [f"fold {f['fold']}" for f in folds],
                                [f["sharpe"] for f in folds])),
    ])


def logs_tail(lines: list[Any]) -> str:
    """The last lines of the trial's events, stage output and trader log."""
    if not lines:
        return '<p class="empty">no log lines</p>'
    body = "\n".join(f"{when(line.ts)} [{escape(line.source)}] {escape(line.text)}"
                     for line in lines)
    return f'<pre class="logs">{body}</pre>'
