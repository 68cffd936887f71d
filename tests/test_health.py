"""Health: components recorded by a real daemon, the overall decision, `pipeline health`."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from pipeline_v2 import health
from pipeline_v2.config import load_config
from pipeline_v2.health import Check, Level, Overall
from pipeline_v2.lock import DaemonLock
from tests.engine_helpers import FIX, spawn_daemon, store_for, wait_for, workspace
from tests.http_helpers import get_json, with_daemon


def stage(target: str) -> dict:
    return {"run": f"{FIX}:{target}", "max_attempts": 1, "timeout_seconds": 20}


def test_storage_vanishing_degrades_and_returning_heals(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, {"a": stage("ok")}, daemon={
        "check_interval": 0.1, "health_check_interval": 2, "http": "127.0.0.1:0"})
    optuna_db, gone = tmp_path / "optuna.db", tmp_path / "optuna.db.gone"
    seen: list = []

    def status(base: str) -> tuple[int, str]:
        code, body = get_json(f"{base}/health")
        return code, body["components"].get("discovery", {}).get("status")

    def client(base: str) -> None:
        wait_for(lambda: status(base) == (200, "ok"))
        optuna_db.rename(gone)
        wait_for(lambda: status(base)[0] == 503)
        code, body = get_json(f"{base}/health")
        seen.append((code, body["status"], body["components"]["discovery"]))
        gone.rename(optuna_db)
        wait_for(lambda: status(base) == (200, "ok"))
        seen.append(get_json(f"{base}/health")[1]["status"])

    with_daemon(path, client)
    code, overall, discovery = seen[0]
    assert (code, overall) == (503, "degraded")
    assert discovery["status"] not in ("ok", "running")  # the poll's or the monitor's verdict
    assert f'"{optuna_db}"' in discovery["message"]
    assert seen[1] == "healthy"
    # The daemon has stopped: down, exit 2.
    result = invoke("health", "--json", "--config", str(path))
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout)["status"] == "down"
    assert json.loads(result.stdout)["detail"].startswith("the daemon stopped at ")


def test_a_clean_stop_leaves_no_stale_ok(tmp_path: Path, invoke) -> None:
    """After SIGTERM every component the daemon watched says `stopped`; health says since when,
    from the CLI and from /health (served by `pipeline dashboard` while no daemon runs)."""
    from pipeline_v2.http.server import HttpService

    path = workspace(tmp_path, {"a": stage("ok")}, daemon={
        "check_interval": 0.1, "health_check_interval": 2, "http": "127.0.0.1:0"})
    with_daemon(path, lambda base: wait_for(lambda: get_json(f"{base}/health")[0] == 200))
    result = invoke("health", "--json", "--config", str(path))
    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout)
    components = report["components"]
    daemon = components.pop("daemon")
    assert report["status"] == "down"
    assert report["detail"] == f"the daemon stopped at {daemon['checked_at']}"
    assert daemon["status"] == "stopped"
    assert daemon["message"] == f"pid {daemon['details']['pid']} stopped (signal)"
    assert {"discovery", "workers", "state_db", "disk", "http"} <= set(components)
    assert {c["status"] for c in components.values()} == {"stopped"}, components
    assert re.fullmatch(r"not watched: the daemon stopped \(last check: [01]/2 busy\)",
                        components["workers"]["message"]), components["workers"]
    text = invoke("health", "--config", str(path))
    assert text.stdout.splitlines()[0] == (
        f"pipeline down (the daemon stopped at {daemon['checked_at']})")
    service = HttpService(lambda: load_config(path), address="127.0.0.1:0")
    assert service.start()
    try:
        assert service.bound is not None
        code, body = get_json(f"http://127.0.0.1:{service.bound[1]}/health")
    finally:
        service.stop()
    assert (code, body["status"], body["detail"]) == (503, "down", report["detail"])
    assert body["components"]["discovery"]["status"] == "stopped"


def test_a_killed_daemon_is_down_at_once(tmp_path: Path, invoke) -> None:
    """SIGKILL leaves a fresh `running` heartbeat behind; with no process holding the lock,
    status, health and /health (served by `pipeline dashboard`) say down at once, not after
    three missed heartbeats."""
    from pipeline_v2.http.server import HttpService

    path = workspace(tmp_path, {"a": stage("ok")}, daemon={
        "check_interval": 0.1, "health_check_interval": 60, "http": None})
    store = store_for(path)
    proc = spawn_daemon(path)
    try:
        wait_for(lambda: store.health().get("daemon", {}).get("status") == "running")
        assert invoke("health", "--config", str(path)).exit_code == 0
    finally:
        proc.kill()
        proc.wait()
    heartbeat = store.health()["daemon"]
    assert heartbeat["status"] == "running"  # nobody recorded the death
    since = datetime.fromtimestamp(heartbeat["checked_at"], UTC).isoformat(timespec="seconds")
    detail = f"the daemon is not running (no process holds its lock; last heartbeat {since})"
    result = invoke("status", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith(f"pipeline down ({detail})   trials ")
    result = invoke("health", "--config", str(path))
    assert result.exit_code == 2
    assert result.stdout.splitlines()[0] == f"pipeline down ({detail})"
    service = HttpService(lambda: load_config(path), address="127.0.0.1:0")
    assert service.start()
    try:
        assert service.bound is not None
        code, body = get_json(f"http://127.0.0.1:{service.bound[1]}/health")
    finally:
        service.stop()
    assert (code, body["status"], body["detail"]) == (503, "down", detail)


def test_a_stopped_daemon_keeps_its_components_problems(tmp_path: Path) -> None:
    """A component with a problem keeps it through a clean stop: the last thing known."""
    from pipeline_v2 import monitor

    path = workspace(tmp_path, {"a": stage("ok")})
    store = store_for(path)
    store.set_health("disk", "warning", "95% used", 10.0)
    store.set_health("workers", "ok", "0/2 busy", 11.0)
    monitor.record_stopped(store, 20.0, 4242, "idle")
    components = store.health()
    assert (components["disk"]["status"], components["disk"]["message"],
            components["disk"]["checked_at"]) == ("warning", "95% used", 10.0)
    assert (components["workers"]["status"], components["workers"]["checked_at"]) == (
        "stopped", 11.0)
    assert (components["daemon"]["status"], components["daemon"]["message"],
            components["daemon"]["checked_at"]) == ("stopped", "pid 4242 stopped (idle)", 20.0)
    assert health.explain(components, Overall.DOWN) == (
        "the daemon stopped at 1970-01-01T00:00:20+00:00")


def _record(path: Path, **components: str) -> None:
    store = store_for(path)
    now = time.time()
    for name, status in components.items():
        store.set_health(name, status, f"{name} says {status}", now)
    store.close()


def test_pipeline_health_exit_codes(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, {"a": stage("ok")})
    cfg = ["--config", str(path)]
    result = invoke("health", *cfg)
    assert result.exit_code == 2 and "pipeline down (no daemon has run yet)" in result.stdout
    _record(path, daemon="running", disk="ok", discovery="ok")
    with DaemonLock(load_config(path).state_db_path):  # as a live daemon holds it
        result = invoke("health", *cfg)
        assert result.exit_code == 0, result.output
        assert "pipeline healthy" in result.stdout
        _record(path, disk="warning")
        result = invoke("health", "--json", *cfg)
        assert result.exit_code == 1
        report = json.loads(result.stdout)
        assert report["status"] == "degraded"
        assert report["detail"] == "disk: disk says warning"
        assert report["components"]["disk"]["status"] == "warning"
    # The same records with no process holding the lock: the daemon is gone.
    assert invoke("health", *cfg).exit_code == 2
    _record(path, daemon="stopped")
    assert invoke("health", *cfg).exit_code == 2


def test_overall_decision_is_pure() -> None:
    now = 1000.0
    running = {"status": "running", "checked_at": now - 1, "message": ""}
    ok = {"status": "ok", "checked_at": now, "message": "fine"}
    bad = {"status": "error", "checked_at": now, "message": "boom"}
    assert health.overall({}, 60, now) == Overall.DOWN
    assert health.overall({"daemon": running, "disk": ok}, 60, now) == Overall.HEALTHY
    assert health.overall({"daemon": running, "disk": bad}, 60, now) == Overall.DEGRADED
    stale = running | {"checked_at": now - 181}
    assert health.overall({"daemon": stale}, 60, now) == Overall.DOWN
    assert health.explain({"daemon": stale}, Overall.DOWN) == "the daemon's heartbeat is stale"
    # A live daemon that cannot write its heartbeat (a full disk): degraded with the reason.
    full = "disk: full (0 bytes free in /srv): the daemon (pid 7) runs but cannot write x.db"
    assert health.overall({"daemon": stale}, 60, now, (), full) == Overall.DEGRADED
    assert health.explain({"daemon": stale}, Overall.DEGRADED, (), full) == full
    stopped = running | {"status": "stopped"}
    assert health.overall({"daemon": stopped}, 60, now, (), full) == Overall.DOWN
    # A fresh heartbeat but no lock holder (the daemon was SIGKILLed): down at once.
    assert health.overall({"daemon": running, "disk": ok}, 60, now, alive=False) == Overall.DOWN
    assert health.explain({"daemon": running}, Overall.DOWN, alive=False) == (
        "the daemon is not running (no process holds its lock; "
        "last heartbeat 1970-01-01T00:16:39+00:00)")
    problems = ["s:3 crash-looping (2 crashes)"]  # seen by `status` between health records
    assert health.overall({"daemon": running}, 60, now, problems) == Overall.DEGRADED
    assert health.explain({"daemon": running}, Overall.DEGRADED, problems) == (
        "deployments: s:3 crash-looping (2 crashes)")


def test_component_checks() -> None:
    rows = [{"trial": "s:1", "status": "fatal", "crash_loop": True, "last_heartbeat": None},
            {"trial": "s:2", "status": "running", "last_heartbeat": 0.0},
            {"trial": "s:3", "status": "running", "last_heartbeat": 95.0}]
    check = health.check_deployments(rows, heartbeat_timeout=10, now=100.0)
    assert check.level == Level.ERROR
    assert check.message == "fatal: s:1; crash loop: s:1; stale heartbeat: s:2"
    assert health.check_deployments(rows[2:], 10, 100.0).level == Level.OK
    assert health.check_disk(91, 90).level == Level.WARNING
    assert health.check_disk(50, 90).message == "50% used"
    assert health.check_notifications(True, 3, 0, "HTTPError: 500").level == Level.WARNING
    assert health.check_notifications(True, 0, 2, None).message == "0 waiting, 2 given up"
    assert health.check_notifications(False, 0, 0, None).level == Level.OK
    assert health.check_discovery(0.0, 1.0, "ok", None, now=10.0).level == Level.ERROR
    assert health.check_discovery(9.0, 1.0, "ok", None, now=10.0) is None
    assert health.check_discovery(9.0, 1.0, "ok", "gone", now=10.0) == Check(Level.ERROR, "gone")


def test_health_compares_deployment_statuses_as_enums() -> None:
    """health.py names deployment statuses through models.DeploymentStatus, never as strings."""
    import ast

    from pipeline_v2.models import DeploymentStatus

    tree = ast.parse(Path(health.__file__).read_text(encoding="utf-8"))
    names = {s.value for s in DeploymentStatus} - {s.value for s in Level}
    literals = [node.value for node in ast.walk(tree) if isinstance(node, ast.Compare)
                for side in (node.left, *node.comparators) for node in ast.walk(side)
                if isinstance(node, ast.Constant) and node.value in names]
    assert literals == []
    rows = [{"trial": f"s:{i}", "status": s, "last_heartbeat": None}
            for i, s in enumerate(DeploymentStatus)]
    check = health.check_deployments(rows, heartbeat_timeout=10, now=100.0)
    assert (check.details["live"], check.details["fatal"]) == (2, ["s:5"])


def test_discovery_reports_a_vanished_storage_file_not_the_old_one(tmp_path: Path) -> None:
    """An open connection keeps reading a renamed/deleted SQLite file; the poll must notice."""
    from pipeline_v2.discovery import Discovery

    path = workspace(tmp_path, {"a": stage("ok")})
    discovery = Discovery(load_config(path), store_for(path))
    assert discovery.poll().errors == []
    (tmp_path / "optuna.db").rename(tmp_path / "elsewhere.db")
    errors = discovery.poll().errors
    assert len(errors) == 1 and f'"{tmp_path / "optuna.db"}"' in errors[0]
    (tmp_path / "elsewhere.db").rename(tmp_path / "optuna.db")
    assert discovery.poll().errors == []
    discovery.close()
