"""The daemon's HTTP server: real server, real daemon, loopback port chosen by the OS."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline_v2.config import load_config
from pipeline_v2.errors import ConfigError
from pipeline_v2.store import observe
from tests.engine_helpers import FIX, store_for, wait_for, workspace
from tests.http_helpers import TOKEN, get, get_json, with_daemon


def stage(target: str, **kw) -> dict:
    return {"run": f"{FIX}:{target}", "max_attempts": 1, "timeout_seconds": 20, **kw}


def daemon_cfg(http: str | None = "127.0.0.1:0", **kw) -> dict:
    return {"check_interval": 0.1, "health_check_interval": 0.2, "workers": 2, "http": http,
            **kw}


def test_endpoints_answer_while_the_daemon_works(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": stage("ok"), "b": stage("always_fail")}, trials=3,
                     daemon=daemon_cfg())
    seen: dict = {}

    def client(base: str) -> None:
        store = store_for(path)
        wait_for(lambda: store.trial_counts().get("failed") == 3)
        seen["status"] = get_json(f"{base}/status")
        seen["health"] = get_json(f"{base}/health")
        seen["trials"] = get_json(f"{base}/trials?status=failed&limit=2&offset=1")
        seen["trial"] = get_json(f"{base}/trials/s:1")
        seen["missing"] = get_json(f"{base}/trials/s:99")
        seen["bad"] = get_json(f"{base}/trials?limit=lots")
        seen["nowhere"] = get_json(f"{base}/nowhere")
        seen["metrics"] = get(f"{base}/metrics")
        seen["cli_status"] = json.loads(invoke_json("status", path))
        seen["cli_show"] = json.loads(invoke_json("show", path, "s:1"))

    with_daemon(path, client)
    code, status = seen["status"]
    assert code == 200
    assert status["trials_failed"] == 3 and status["pipeline"] == "healthy"
    moving = {"health", "last_check"}  # the daemon keeps polling between the two reads
    assert set(status) == set(seen["cli_status"])
    assert {k: v for k, v in status.items() if k not in moving} == {
        k: v for k, v in seen["cli_status"].items() if k not in moving}
    code, health = seen["health"]
    assert code == 200 and health["status"] == "healthy"
    assert {"daemon", "discovery", "workers", "deployments", "state_db", "disk",
            "notifications", "http"} <= set(health["components"])
    code, page = seen["trials"]
    assert code == 200 and page["total"] == 3
    assert [t["number"] for t in page["trials"]] == [1, 2]
    assert seen["trial"] == (200, seen["cli_show"])
    assert seen["missing"][0] == 404 and "s:99" in seen["missing"][1]["error"]
    assert seen["bad"] == (400, {"error": 'limit: expected an integer 0-500, got "lots"'})
    assert seen["nowhere"][0] == 404
    code, text, headers = seen["metrics"]
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("pipeline_trials", (("status", "failed"),))] == 3
    assert samples[("pipeline_stage_attempts_total", (("outcome", "passed"), ("stage", "a")))] == 3
    assert samples[("pipeline_stage_attempts_total", (("outcome", "failed"), ("stage", "b")))] == 3
    assert samples[("pipeline_stage_duration_seconds_count", (("stage", "a"),))] == 3
    assert samples[("pipeline_discovered_trials_total", ())] == 3
    assert samples[("pipeline_health", (("state", "healthy"),))] == 1
    assert samples[("pipeline_last_heartbeat_timestamp_seconds", ())] > 0
    assert ("pipeline_loop_lag_seconds", ()) in samples


def invoke_json(command: str, path: Path, *args: str) -> str:
    from typer.testing import CliRunner

    from pipeline_v2.cli import app

    result = CliRunner().invoke(app, [command, *args, "--json", "--config", str(path)])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_a_non_loopback_bind_requires_a_token(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIPELINE_HTTP_TOKEN", raising=False)
    path = workspace(tmp_path, {"a": stage("ok")}, daemon=daemon_cfg("0.0.0.0:8765"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f'{path}: daemon.http_token: required when daemon.http binds a non-loopback address '
        '("0.0.0.0:8765"); set a token of 16+ characters (or $PIPELINE_HTTP_TOKEN), or bind '
        "127.0.0.1")


def test_bad_http_address_names_the_key(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": stage("ok")}, daemon=daemon_cfg("localhost"))
    with pytest.raises(ConfigError, match=r'daemon\.http: .*expected "host:port"'):
        load_config(path)


def test_token_enforced_on_every_request(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": stage("ok")},
                     daemon=daemon_cfg("0.0.0.0:0", http_token=TOKEN))
    seen: dict = {}

    def client(base: str) -> None:
        for route in ("/status", "/health", "/metrics", "/trials", "/trials/s:0"):
            seen[route] = (get(base + route)[0], get(base + route, "wrong-token")[0],
                           get(base + route, TOKEN)[0])

    with_daemon(path, client)
    for route, (none, wrong, right) in seen.items():
        assert (none, wrong) == (401, 401), route
        assert right in (200, 503), route  # /health may be degraded; never 401


def test_address_in_use_is_degraded_and_the_daemon_keeps_running(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    path = workspace(tmp_path, {"a": stage("ok")}, trials=2,
                     daemon=daemon_cfg(f"127.0.0.1:{port}"))
    try:
        from tests.engine_helpers import run

        summary = run(path, mode="until_idle")
    finally:
        blocker.close()
    assert summary.idle and summary.attempts == 2
    store = observe.open_readonly(load_config(path).state_db_path)
    http = store.health()["http"]
    assert http["status"] == "error"
    assert http["message"] == f"cannot listen on 127.0.0.1:{port}: Address already in use"


def test_deployment_metrics_come_from_the_state_db(tmp_path: Path) -> None:
    from prometheus_client.exposition import generate_latest

    from pipeline_v2 import health
    from pipeline_v2.http.metrics import PipelineCollector, registry_for
    from pipeline_v2.models import DeploymentStatus as D
    from pipeline_v2.models import StageStatus, TrialStatus

    path = workspace(tmp_path, {"deploy": {"kind": "deploy"}}, trials=0)
    store = store_for(path)
    now = 1_000_000.0
    deps = []
    for number in (7, 8):
        with store.transaction():
            tid = store.add_trial({"study": "s", "number": number, "value": 1.0},
                                  [("deploy", StageStatus.PENDING)], 0, now, TrialStatus.PASSED)
        dep = store.begin_deployment(tid, "deploy", str(tmp_path / str(number)), now, "test")
        for status in (D.STARTING, D.RUNNING):
            dep = store.set_deployment_status(dep, status, now)
        deps.append(dep)
    store.note_deployment(deps[0].id, now, metrics={"equity": 10500.0}, last_heartbeat=now - 12,
                          restarts=2)
    for status in (D.CRASHED, D.FATAL):
        deps[1] = store.set_deployment_status(deps[1], status, now)
    store.add_deployment_event("deployment.crash_loop", deps[1].trial_id, now, "5 crashes")
    ro = observe.open_readonly(load_config(path).state_db_path)  # what the server reads with
    collector = PipelineCollector(lambda: ro, lambda: load_config(path), clock=lambda: now)
    text = generate_latest(registry_for(collector)).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("pipeline_paper_equity", (("trial", "s:7"),))] == 10500.0
    assert samples[("pipeline_trader_heartbeat_age_seconds", (("trial", "s:7"),))] == 12.0
    assert ("pipeline_paper_equity", (("trial", "s:8"),)) not in samples  # not live
    assert samples[("pipeline_trader_restarts_total", ())] == 2
    assert samples[("pipeline_trader_crash_loops_total", ())] == 1
    assert samples[("pipeline_deployments", (("status", "running"),))] == 1
    assert samples[("pipeline_deployments", (("status", "fatal"),))] == 1
    check = health.check_deployments(observe.deployment_facts(ro), heartbeat_timeout=10, now=now)
    assert check.message == "fatal: s:8; crash loop: s:8; stale heartbeat: s:7"
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.conn.execute("DELETE FROM trials")  # the HTTP side cannot write
    ro.close()
    store.close()
