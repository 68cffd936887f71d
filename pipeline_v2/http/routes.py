"""The route table: (method, path pattern) -> handler. The dashboard adds its pages here.

Handlers read through the functions the CLI uses (`status.snapshot`, `control.show_trial`, the
trials query) and return data; the server turns it into JSON. None of them writes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from pipeline_v2 import render
from pipeline_v2.config import Config
from pipeline_v2.control import show_trial
from pipeline_v2.errors import NotFoundError
from pipeline_v2.health import EXIT_CODES, Overall
from pipeline_v2.models import TrialStatus
from pipeline_v2.status import health_report, snapshot
from pipeline_v2.store import Store, observe

MAX_PAGE = 500


@dataclass
class Response:
    """What a handler answers: a status code, a body and its type."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: int = 200) -> Response:
    """JSON of any result, rendered as the CLI's `--json` renders it."""
    return Response(status, (render.to_json(data) + "\n").encode())


def error(status: int, message: str) -> Response:
    """A JSON error body: {"error": "..."}."""
    return json_response({"error": message}, status)


@dataclass
class Request:
    """What a handler gets: the read-only store, the config, path groups and query params."""

    store: Store
    config: Config
    params: dict[str, str]
    groups: dict[str, str]
    registry: Any = None
    now: float = field(default_factory=time.time)
    headers: Any = None  # the request's headers (a Message or a dict)
    body: bytes = b""
    client: str = ""  # the peer's address, for the audit trail


Handler = Callable[[Request], Response]


def get_status(req: Request) -> Response:
    """GET /status: the JSON of `pipeline status --json`."""
    return json_response(snapshot(req.store, req.config, req.now))


def get_health(req: Request) -> Response:
    """GET /health: 200 when healthy, 503 when degraded or down."""
    report = health_report(req.store, req.config, req.now)
    code = 200 if EXIT_CODES[Overall(report["status"])] == 0 else 503
    return json_response(report, code)


def get_metrics(req: Request) -> Response:
    """GET /metrics: Prometheus text."""
    return Response(200, generate_latest(req.registry), CONTENT_TYPE_LATEST)


def _int_param(req: Request, name: str, default: int, high: int) -> int:
    text = req.params.get(name, str(default))
    if not text.isdigit() or int(text) > high:
        raise ValueError(f'{name}: expected an integer 0-{high}, got "{text}"')
    return int(text)


def get_trials(req: Request) -> Response:
    """GET /trials?status=&limit=&offset=: one page of `pipeline trials --json`."""
    status = req.params.get("status") or None
    if status is not None and status not in {s.value for s in TrialStatus}:
        return error(400, f'status: unknown status "{status}" (expected one of '
                          f"{', '.join(s.value for s in TrialStatus)})")
    try:
        limit = _int_param(req, "limit", 100, MAX_PAGE)
        offset = _int_param(req, "offset", 0, 10**12)
    except ValueError as exc:
        return error(400, str(exc))
    return json_response(observe.trials_page(req.store, status, limit, offset))


def get_trial(req: Request) -> Response:
    """GET /trials/{ref}: the JSON of `pipeline show --json`."""
    try:
        return json_response(show_trial(req.store, req.groups["ref"]))
    except NotFoundError as exc:
        return error(404, str(exc))


ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    ("GET", re.compile(r"/status"), get_status),
    ("GET", re.compile(r"/health"), get_health),
    ("GET", re.compile(r"/metrics"), get_metrics),
    ("GET", re.compile(r"/trials"), get_trials),
    ("GET", re.compile(r"/trials/(?P<ref>[^/]+)"), get_trial),
]


# The dashboard's pages and its action API (they import Request and Response from here).
from pipeline_v2.http import api, dashboard  # noqa: E402

ROUTES += dashboard.ROUTES + api.ROUTES
# Readable without the token on a loopback bind (through an SSH tunnel): pages, assets, the API
# document. Actions always need the token; ops' JSON endpoints keep their own rule.
PUBLIC = re.compile(r"/|/ui(/.*)?|/static/[\w.-]+|/api/openapi\.json")


def resolve(method: str, path: str) -> tuple[Handler, dict[str, str]] | int:
    """The handler and path groups for a request, or 404 / 405."""
    allowed = False
    for verb, pattern, handler in ROUTES:
        match = pattern.fullmatch(path)
        if match:
            if verb == method:
                return handler, match.groupdict()
            allowed = True
    return 405 if allowed else 404
