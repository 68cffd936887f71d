"""Status, show and trials tell the truth: current state as current, history as history."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.engine_helpers import FIX, run, spawn_daemon, store_for, wait_for, workspace
from tests.test_deploy import stages

pytestmark = pytest.mark.usefixtures("no_trader_outlives_its_test")


def test_status_is_degraded_while_deployments_are_fatal(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, stages("crash"), trials=1)
    proc = spawn_daemon(path)
    try:
        store = store_for(path)
        wait_for(lambda: [d.status.value for d in store.deployments()] == ["fatal"], 20)
        wait_for(lambda: store.health().get("daemon", {}).get("status") == "running", 20)
        result = invoke("status", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["pipeline"] == "degraded"
        assert data["pipeline_detail"] == "deployments: s:0 fatal"
        assert data["deployments"][0]["trial"] == "s:0"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_show_presents_a_stage_passed_on_a_later_attempt_as_passed(tmp_path: Path,
                                                                    invoke) -> None:
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:flaky", "max_attempts": 3}})
    assert run(path).idle
    shown = invoke("show", "0")
    assert shown.exit_code == 0, shown.output
    stage_rows = shown.stdout.split("events")[0]
    assert "flaky failure" not in stage_rows  # attempt 1 and 2's errors are history
    assert "sharpe=2" in stage_rows
    assert "flaky failure 1" in shown.stdout  # and the history still has them
    data = json.loads(invoke("show", "0", "--json").stdout)
    assert data["stages"][0]["error_message"] is None


def test_a_passed_trial_does_not_show_an_old_retry_as_its_reason(tmp_path: Path,
                                                                 invoke) -> None:
    flag = tmp_path / "flag"
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:fail_unless_file", "max_attempts": 1,
                                      "params": {"flag": str(flag)}}})
    run(path)
    assert store_for(path).find_trial("0").status.value == "failed"
    flag.touch()
    assert invoke("retry", "0").exit_code == 0
    run(path)
    trial = store_for(path).find_trial("0")
    assert trial.status.value == "passed"
    assert trial.reason is None
    assert "retry by hand" not in invoke("trials").stdout


def test_show_presents_a_retried_then_skipped_stage_as_skipped(tmp_path: Path,
                                                               invoke) -> None:
    """A stage's row is its current state: a retried stage waits with no result, a skipped one
    says so; the rejected attempt's metrics are history (the events' data), not current."""
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok", "max_attempts": 1,
                                      "gates": {"sharpe": ">= 5"}},
                                "b": {"run": f"{FIX}:ok", "max_attempts": 1}})
    run(path)
    shown = invoke("show", "0")
    assert "sharpe" in shown.stdout.split("events")[0]  # rejected: its verdict and metrics
    assert invoke("retry", "0").exit_code == 0
    data = json.loads(invoke("show", "0", "--json").stdout)
    a = data["stages"][0]
    assert (a["status"], a["results"], a["reason"]) == ("pending", None, None)
    assert invoke("skip", "0", "a").exit_code == 0
    shown = invoke("show", "0")
    assert shown.exit_code == 0, shown.output
    rows = [line.split() for line in shown.stdout.split("events")[0].splitlines()]
    assert ["a", "skipped", "0", "-", "skipped", "by", "hand"] in rows, shown.stdout
    assert "sharpe" not in shown.stdout.split("events")[0], shown.stdout
    assert "\nreason a skipped\n" in shown.stdout
    data = json.loads(invoke("show", "0", "--json").stdout)
    a = data["stages"][0]
    assert (a["status"], a["results"], a["reason"]) == ("skipped", None, "skipped by hand")
    retried = [e for e in data["events"] if e["kind"] == "stage.pending" and e["stage"] == "a"
               and e["old_status"] == "rejected"]
    assert retried[0]["data"]["results"]["sharpe"] == 1.5  # the history keeps the metrics
    assert retried[0]["data"]["reason"].startswith("sharpe 1.5 < 5")
