"""The dashboard's action API: `POST /api/trials/{ref}/{action}` and its OpenAPI document.

An action needs the `daemon.http_token` as a Bearer header, always (even on loopback): with no
token configured actions are refused, so a page left open on a shared host changes nothing. Each
runs the CLI's control function on its own short-lived writing connection (the server's stays
read-only) and is recorded in the audit trail with its source and the client's address.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import time
from typing import Any

from pipeline_v2 import control
from pipeline_v2.addresses import TOKEN_ENV
from pipeline_v2.config import Config
from pipeline_v2.errors import NotFoundError, PipelineError
from pipeline_v2.http.routes import Handler, Request, Response, error, json_response
from pipeline_v2.logs import get_logger
from pipeline_v2.store import Store, open_store

log = get_logger("http")
EVENT = "http.action"
ACTIONS = ("retry", "skip", "pause", "resume", "cancel", "deploy", "stop")
NEEDS_STAGE = ("skip",)


def token_of(config: Config) -> str | None:
    """The configured token (config, else the environment), or None."""
    return config.daemon.http_token or os.environ.get(TOKEN_ENV) or None


def _run(action: str, store: Store, config: Config, ref: str, stage: str | None) -> Any:
    """The control function behind one action; returns what it did."""
    if action == "retry":
        return control.retry(store, config, ref, stage)
    if action == "skip":
        return control.skip(store, config, ref, stage or "").value
    if action == "pause":
        return control.pause(store, ref)
    if action == "resume":
        return control.resume(store, ref)
    if action == "cancel":
        return control.cancel(store, ref)
    if action == "deploy":
        return control.deploy(store, config, ref)
    return control.stop(store, config, ref)


def _refusal(req: Request) -> Response | None:
    """401/403 unless the request carries the configured token."""
    token = token_of(req.config)
    if not token:
        return error(403, "actions are disabled: no daemon.http_token is configured (set it, or "
                          f"${TOKEN_ENV}, and restart the server)")
    given = (req.headers or {}).get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        log.warning("http_action_refused", client=req.client, path=req.groups)
        response = error(401, "missing or wrong bearer token (Authorization: Bearer "
                              "<daemon.http_token>)")
        response.headers["WWW-Authenticate"] = 'Bearer realm="pipeline"'
        return response
    return None


def post_action(req: Request) -> Response:
    """POST /api/trials/{ref}/{action} with an optional JSON body {"stage": NAME}."""
    ref, action = req.groups["ref"], req.groups["action"]
    if action not in ACTIONS:
        return error(404, f'unknown action "{action}" (expected one of {", ".join(ACTIONS)})')
    refused = _refusal(req)
    if refused is not None:
        return refused
    try:
        args = json.loads(req.body or b"{}")
    except ValueError:
        return error(400, "body: expected a JSON object like {\"stage\": \"backtest\"}")
    stage = args.get("stage") if isinstance(args, dict) else None
    if not isinstance(args, dict) or (stage is not None and not isinstance(stage, str)):
        return error(400, "body: expected a JSON object like {\"stage\": \"backtest\"}")
    if action in NEEDS_STAGE and not stage:
        return error(400, f'{action}: the body needs a "stage" (e.g. {{"stage": "backtest"}})')
    store = open_store(req.config)  # short-lived writer: the server's own connection is read-only
    store.wakes_daemon = True  # the loop acts on the change at once (it does not poll for it)
    try:
        result = _run(action, store, req.config, ref, stage or None)
        found = store.find_trial(ref)
        store.add_event(EVENT, time.time(), found.id, stage, message=(
            f"{action} by http from {req.client}"), data={
            "source": "http", "remote": req.client, "action": action, "args": args,
            "result": result})
    except NotFoundError as exc:
        return error(404, str(exc))
    except PipelineError as exc:  # a refusal: the trial is not in a state the action allows
        return error(409, str(exc))
    finally:
        store.close()
    log.info("http_action", action=action, trial=ref, client=req.client)
    return json_response({"action": action, "trial": ref, "result": result})


def _error_schema() -> dict[str, Any]:
    return {"description": "refused", "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/Error"}}}}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 document of the action API (and the read endpoints it sits beside)."""
    refusals = {code: _error_schema() | {"description": why} for code, why in (
        ("400", "bad body"), ("401", "missing or wrong bearer token"),
        ("403", "no token configured: actions are disabled"), ("404", "no such trial"),
        ("409", "the trial's state does not allow this action"))}
    post = {
        "summary": "Run an action on a trial (as the CLI's command of that name does)",
        "security": [{"bearer": []}],
        "parameters": [
            {"name": "ref", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "a trial: number or study:number"},
            {"name": "action", "in": "path", "required": True,
             "schema": {"type": "string", "enum": list(ACTIONS)}}],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"stage": {
                "type": "string", "description": "retry: that stage; skip: required"}}}}}},
        "responses": {"200": {"description": "done", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ActionResult"}}}}, **refusals},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "pipeline dashboard API", "version": "1"},
        "paths": {
            "/api/trials/{ref}/{action}": {"post": post},
            "/status": {"get": {"summary": "pipeline status --json", "responses": {
                "200": {"description": "the status snapshot"}}}},
            "/trials/{ref}": {"get": {"summary": "pipeline show --json", "parameters": [
                {"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the trial"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"}}},
                "ActionResult": {"type": "object", "required": ["action", "trial", "result"],
                                 "properties": {"action": {"type": "string"},
                                                "trial": {"type": "string"}, "result": {}}},
            },
        },
    }


def get_openapi(req: Request) -> Response:
    """GET /api/openapi.json."""
    return json_response(openapi())


ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    ("GET", re.compile(r"/api/openapi\.json"), get_openapi),
    ("POST", re.compile(r"/api/trials/(?P<ref>[^/]+)/(?P<action>[a-z]+)"), post_action),
]
