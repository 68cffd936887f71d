"""The dashboard over plain HTTP: pages, fragments, the token-guarded action API, its OpenAPI
document, and `pipeline dashboard` serving the state DB with no daemon."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.engine_helpers import FIX, run, store_for, wait_for, workspace
from tests.http_helpers import TOKEN, get, with_daemon


def stage(target: str) -> dict:
    return {"run": f"{FIX}:{target}", "max_attempts": 1, "timeout_seconds": 20}


def daemon_cfg(http: str = "127.0.0.1:0", **kw: Any) -> dict:
    return {"check_interval": 0.1, "health_check_interval": 0.2, "workers": 2, "http": http,
            **kw}


def post(url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = b"" if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


STAGES = {"a": stage("metric_from_param"), "b": stage("always_fail")}


def test_actions_need_the_token_and_are_audited(tmp_path: Path) -> None:
    path = workspace(tmp_path, STAGES, trials=3, daemon=daemon_cfg(http_token=TOKEN))
    seen: dict[str, Any] = {}

    def client(base: str) -> None:
        store = store_for(path)
        wait_for(lambda: store.trial_counts().get("failed") == 3)
        store.wakes_daemon = True  # as the CLI's store does: the daemon sees the pause at once
        store.set_setting("paused_all", "1")  # keep the retried stage pending
        url = f"{base}/api/trials/s:1"
        seen["page"] = get(f"{base}/ui/trials/s:1")  # readable without the token on loopback
        seen["none"] = post(f"{url}/retry")
        seen["wrong"] = post(f"{url}/retry", token="not-the-token")
        seen["unknown"] = post(f"{url}/explode", token=TOKEN)
        seen["bad_body"] = post(f"{url}/retry", body=["b"], token=TOKEN)
        seen["skip_no_stage"] = post(f"{url}/skip", token=TOKEN)
        seen["missing"] = post(f"{base}/api/trials/s:99/retry", token=TOKEN)
        seen["refused"] = post(f"{url}/resume", token=TOKEN)
        seen["status_after_refusals"] = store.find_trial("s:1").status.value
        seen["ok"] = post(f"{url}/retry", body={"stage": "b"}, token=TOKEN)
        seen["ops_json"] = get(f"{base}/status")[0]  # ops' rule: its JSON still needs the token
        trial = store.find_trial("s:1")
        seen["stages"] = [s.status.value for s in store.stages_of(trial.id)]
        seen["events"] = [e for e in store.events_of(trial.id) if e["kind"] == "http.action"]

    with_daemon(path, client)
    code, html, headers = seen["page"]
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert 'data-action="retry"' in html
    message = "missing or wrong bearer token (Authorization: Bearer <daemon.http_token>)"
    assert seen["none"] == (401, {"error": message})
    assert seen["wrong"] == (401, {"error": message})
    assert seen["unknown"] == (404, {"error": 'unknown action "explode" (expected one of retry, '
                                              "skip, pause, resume, cancel, deploy, stop)"})
    assert seen["bad_body"] == (400, {"error": 'body: expected a JSON object like '
                                               '{"stage": "backtest"}'})
    assert seen["skip_no_stage"] == (400, {"error": 'skip: the body needs a "stage" (e.g. '
                                                    '{"stage": "backtest"})'})
    assert seen["missing"][0] == 404 and "s:99" in seen["missing"][1]["error"]
    assert seen["refused"] == (409, {"error": "trial s:1 is failed; resume needs a paused trial"})
    assert seen["status_after_refusals"] == "failed"
    assert seen["ok"] == (200, {"action": "retry", "trial": "s:1", "result": ["b"]})
    assert seen["ops_json"] == 401
    assert seen["stages"] == ["passed", "pending"]
    assert len(seen["events"]) == 1
    event = seen["events"][0]
    assert event["stage"] == "b" and event["message"] == "retry by http from 127.0.0.1"
    assert event["data"] == {"source": "http", "remote": "127.0.0.1", "action": "retry",
                             "args": {"stage": "b"}, "result": ["b"]}


def test_without_a_token_actions_are_disabled_and_say_why(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.delenv("PIPELINE_HTTP_TOKEN", raising=False)
    path = workspace(tmp_path, STAGES, trials=1, daemon=daemon_cfg())
    seen: dict[str, Any] = {}

    def client(base: str) -> None:
        store = store_for(path)
        wait_for(lambda: store.trial_counts().get("failed") == 1)
        seen["post"] = post(f"{base}/api/trials/s:0/retry", token="anything-at-all-here")
        seen["page"] = get(f"{base}/ui/trials/s:0")[1]
        seen["status"] = store.find_trial("s:0").status.value

    with_daemon(path, client)
    assert seen["post"] == (403, {"error": "actions are disabled: no daemon.http_token is "
                                           "configured (set it, or $PIPELINE_HTTP_TOKEN, and "
                                           "restart the server)"})
    assert "actions are disabled: no daemon.http_token is configured" in seen["page"]
    assert 'data-action="retry"' not in seen["page"]
    assert seen["status"] == "failed"


def test_a_non_loopback_bind_keeps_the_pages_behind_the_token(tmp_path: Path) -> None:
    path = workspace(tmp_path, STAGES, trials=1, daemon=daemon_cfg("0.0.0.0:0",
                                                                    http_token=TOKEN))
    seen: dict[str, Any] = {}

    def client(base: str) -> None:
        seen["anon"] = get(f"{base}/")[0], get(f"{base}/static/dashboard.js")[0]
        seen["token"] = get(f"{base}/", TOKEN)[0]

    with_daemon(path, client)
    assert seen == {"anon": (401, 401), "token": 200}


def test_pages_fragments_filters_and_the_openapi_document(tmp_path: Path) -> None:
    path = workspace(tmp_path, STAGES, trials=5, daemon=daemon_cfg())
    seen: dict[str, Any] = {}

    def client(base: str) -> None:
        store = store_for(path)
        wait_for(lambda: store.trial_counts().get("failed") == 5)
        for name, url in {
            "overview": "/", "fragments": "/?fragments=1", "trials": "/ui/trials?limit=2&offset=2",
            "sorted": "/ui/trials?sort=a.sharpe&desc=1&limit=3", "study": "/ui/trials?study=s",
            "stage": "/ui/trials?stage=a", "bad_sort": "/ui/trials?sort=drop+table",
            "bad_limit": "/ui/trials?limit=0", "missing": "/ui/trials/s:42",
            "deployments": "/ui/deployments", "css": "/static/dashboard.css",
            "no_asset": "/static/secrets.txt", "openapi": "/api/openapi.json",
        }.items():
            seen[name] = get(base + url)

    with_daemon(path, client)
    code, html, _ = seen["overview"]
    assert code == 200 and 'data-count="failed">5<' in html and 'id="chart-funnel"' in html
    fragments = json.loads(seen["fragments"][1])
    assert set(fragments["sections"]) == {"health", "counts", "funnel", "work", "deploys",
                                          "recent"}
    assert 'data-count="failed">5<' in fragments["sections"]["counts"]
    html = seen["trials"][1]
    assert re.findall(r'href="/ui/trials/(s:\d)"', html) == ["s:2", "s:3"]
    assert 'id="shown">3–4<' in html and 'id="total">5<' in html
    assert re.findall(r'href="/ui/trials/(s:\d)"', seen["sorted"][1]) == ["s:4", "s:3", "s:2"]
    assert 'id="total">5<' in seen["study"][1]
    assert 'id="total">0<' in seen["stage"][1]  # every trial is at stage b
    assert seen["bad_sort"][0] == 400 and ('sort: unknown sort key &quot;drop table&quot; '
                                           "(expected one of id, number, value, updated, status "
                                           "or STAGE.METRIC)") in seen["bad_sort"][1]
    assert seen["bad_limit"][0] == 400 and "limit: expected an integer 1-500" in seen[
        "bad_limit"][1]
    assert seen["missing"][0] == 404
    assert 'id="chart-deployments"' in seen["deployments"][1]
    assert seen["css"][0] == 200 and seen["css"][2]["Content-Type"].startswith("text/css")
    assert seen["no_asset"][0] == 404
    code, body, _ = seen["openapi"]
    document = json.loads(body)
    assert code == 200 and document["openapi"].startswith("3.")
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


def test_pipeline_dashboard_serves_the_state_db_without_a_daemon(tmp_path: Path) -> None:
    path = workspace(tmp_path, STAGES, trials=2)
    run(path)
    server = subprocess.Popen([sys.executable, "-m", "pipeline_v2", "dashboard", "--port", "0",
                               "--config", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        base = None
        for line in server.stdout:  # type: ignore[union-attr]  (log lines come first)
            base = re.search(r"http://127\.0\.0\.1:\d+", line)
            if base:
                break
        assert base
        code, html, _ = get(base.group(0) + "/ui/trials")
        status, answer = post(base.group(0) + "/api/trials/s:0/retry", token=TOKEN)
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()  # type: ignore[union-attr]
    assert code == 200 and 'id="total">2<' in html
    assert status == 403 and answer["error"].startswith("actions are disabled")
    assert server.returncode == 0


def test_deployments_draw_equity_with_restarts_and_sparklines(tmp_path: Path) -> None:
    from pipeline_v2.config import load_config
    from pipeline_v2.http.server import HttpService

    path = workspace(tmp_path, STAGES, trials=1)
    run(path)
    run_dir = tmp_path / "trader"
    run_dir.mkdir()
    start = 1_800_000_000.0
    (run_dir / "equity.jsonl").write_text("".join(
        json.dumps([f"2027-01-15T08:0{i}:00", 100.0 + i]) + "\n" for i in range(5)))
    store = store_for(path)
    store.conn.execute(
        "INSERT INTO deployments (trial_id, status, run_dir, restarts, crash_times, spawned_at,"
        " last_heartbeat, updated_at) VALUES (1, 'running', ?, 2, ?, ?, ?, ?)",
        [str(run_dir), json.dumps([start + 120]), start, start + 200, start])
    config = load_config(path)
    service = HttpService(lambda: config, address="127.0.0.1:0")
    service.bound = ("127.0.0.1", 0)  # the server's own code, answered in-process
    page = service.handle("GET", "/ui/deployments", {}).body.decode()
    overview = service.handle("GET", "/", {}).body.decode()
    service.stop()
    assert 'data-series="s:0 #1"' in page
    assert 'data-values="100.0 101.0 102.0 103.0 104.0"' in page
    assert 'class="marker"' in page and 'data-time="2027-01-15T08:02:00+00:00"' in page
    assert '<svg class="spark"' in overview and ">2<" in overview  # restarts


def test_trials_sort_by_a_metric_when_results_hold_nan_and_infinity(tmp_path: Path) -> None:
    """A backtest with no losing trade has profit_factor Infinity: sorting the trials page by a
    metric of that stage answered 500 "malformed JSON" (the demo's data has such a trial)."""
    from pipeline_v2.store.base import dumps
    from pipeline_v2.store.browse import TrialQuery, trials_browse

    path = workspace(tmp_path, {"a": stage("metric_from_param")}, trials=4)
    run(path)
    store = store_for(path)
    results = {0: {"sharpe": 0.5, "profit_factor": float("inf")}, 1: {"sharpe": float("nan")},
               2: {"sharpe": float("-inf")}, 3: {"sharpe": float("inf")}}
    with store.transaction() as conn:
        for number, metrics in results.items():
            conn.execute("UPDATE stages SET results = ? WHERE trial_id = (SELECT id FROM trials"
                         " WHERE trial_number = ?)", [dumps(metrics), number])
    for desc, order in ((True, [3, 0, 2, 1]), (False, [2, 0, 3, 1])):  # NaN last either way
        page = trials_browse(store, TrialQuery(sort="a.sharpe", desc=desc))
        assert [t.number for t in page["trials"]] == order
    page = trials_browse(store, TrialQuery(sort="a.profit_factor", desc=True))
    assert [t.number for t in page["trials"]][0] == 0


def test_pipeline_dashboard_prints_one_line_and_logs_to_the_file(tmp_path: Path) -> None:
    """Not a debug line per request on stdout (every 3 s per open page)."""
    path = workspace(tmp_path, STAGES, trials=1)
    run(path)
    server = subprocess.Popen([sys.executable, "-m", "pipeline_v2", "dashboard", "--port", "0",
                               "--config", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()  # type: ignore[union-attr]
        base = re.fullmatch(r"dashboard on (http://127\.0\.0\.1:\d+)/ \(Ctrl-C to stop\)\n",
                            first)
        assert base, first
        assert get(base[1] + "/")[0] == 200
    finally:
        server.terminate()
        out, err = server.communicate(timeout=10)
    assert server.returncode == 0
    assert (out, err) == ("", "")
    logged = [json.loads(line)["event"] for line in
              (tmp_path / "logs" / "pipeline.jsonl").read_text().splitlines()]
    assert "http_listening" in logged and "http_request" not in logged  # INFO, as the daemon
