"""Deploys by hand, pins, redeploys, retried deploy stages and handovers, with real traders."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline_v2.models import DeploymentStatus, StageStatus, TrialStatus
from tests.engine_helpers import FIX, run, store_for, workspace
from tests.test_deploy import stages, traders

D = DeploymentStatus


pytestmark = pytest.mark.usefixtures("no_trader_outlives_its_test")


def running_numbers(path: Path) -> list[int]:
    store = store_for(path)
    return sorted(store.get_trial(d.trial_id).number for d in store.deployments("running"))


def add_trial(tmp_path: Path, x: int) -> None:
    """One more COMPLETE trial in the workspace's study."""
    from tests.optuna_helpers import make_study

    study = make_study(f"sqlite:///{tmp_path / 'optuna.db'}", "s")
    study.enqueue_trial({"x": x})
    trial = study.ask()
    trial.suggest_int("x", 0, 100)
    study.tell(trial, float(x))


def run_until(path: Path, predicate, limit: float = 15.0) -> None:
    """Run the daemon in short bursts until `predicate()` holds (traders outlive each run)."""
    deadline = time.monotonic() + limit
    while True:
        run(path, mode="forever", timeout=0.4)
        if predicate():
            return
        assert time.monotonic() < deadline, "condition not met in time"


def test_deploy_by_hand_replaces_exactly_one_and_is_pinned(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, stages("good"), trials=4)  # sharpe 0.1 .. 0.4
    run_until(path, lambda: running_numbers(path) == [2, 3])
    result = invoke("deploy", "0")
    assert result.exit_code == 0, result.output
    store = store_for(path)
    run_until(path, lambda: store.find_trial("2").status == TrialStatus.RETIRED
              and running_numbers(path) == [0, 3])
    run(path, mode="forever", timeout=1.0)  # no further replacement follows
    assert running_numbers(path) == [0, 3]  # only the lowest-ranked one was replaced
    replaced = store.find_trial("2")
    assert replaced.status == TrialStatus.RETIRED
    assert replaced.reason == "replaced by trial 0 (deployed by hand)"
    assert store.find_trial("3").status == TrialStatus.DEPLOYED
    pinned = store.find_trial("0")
    assert pinned.pinned and pinned.status == TrialStatus.DEPLOYED
    # A new trial 4 beats the pinned trial 0 by more than min_improvement, yet waits.
    add_trial(tmp_path, x=2)
    run_until(path, lambda: store_for(path).find_trial("4").status == TrialStatus.PASSED)
    run(path, mode="forever", timeout=1.0)
    assert store.find_trial("4").status == TrialStatus.PASSED
    assert running_numbers(path) == [0, 3]
    shown = invoke("show", "0", "--json")
    assert '"pinned": true' in shown.stdout
    assert invoke("stop", "0").exit_code == 0
    assert not store.find_trial("0").pinned  # stopped by hand: the pin goes with it
    invoke("stop", "--all")


def test_a_retired_trial_is_redeployed_through_the_deployer(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, stages("good"), trials=1)
    run_until(path, lambda: running_numbers(path) == [0])
    assert invoke("stop", "0").exit_code == 0
    store = store_for(path)
    assert store.find_trial("0").status == TrialStatus.RETIRED
    result = invoke("deploy", "0")
    assert result.exit_code == 0, result.stderr
    run_until(path, lambda: running_numbers(path) == [0])
    deps = store.deployments()
    assert [d.status for d in deps] == [D.STOPPED, D.RUNNING]  # history kept: a new row
    deploy = store.stages_of(store.find_trial("0").id)[1]
    assert (deploy.status, deploy.attempts) == (StageStatus.RUNNING, 2)
    invoke("stop", "--all")


def test_retry_of_a_crash_looped_deploy_stage_goes_back_to_promotion(
        tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, stages("crash"), trials=1)
    assert run(path).idle
    store = store_for(path)
    assert store.find_trial("0").status == TrialStatus.FAILED
    result = invoke("retry", "0")
    assert result.exit_code == 0, result.output
    trial = store.find_trial("0")
    assert trial.status == TrialStatus.PASSED  # waits for the deployer, never a stage worker
    assert store.stages_of(trial.id)[1].status == StageStatus.PENDING
    assert store.next_attempt_time() is None


def test_deploy_by_hand_of_a_trial_failed_in_deployment(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, stages("crash"), trials=1)
    run(path)
    result = invoke("deploy", "0")
    assert result.exit_code == 0, result.stderr
    store = store_for(path)
    trial = store.find_trial("0")
    assert (trial.status, trial.pinned) == (TrialStatus.DEPLOYED, True)
    assert len(store.deployments()) == 2


def test_a_replacement_that_never_starts_leaves_the_old_trader_running(
        tmp_path: Path) -> None:
    path = workspace(tmp_path, stages("good_unless_9"), trials=2)
    run_until(path, lambda: running_numbers(path) == [0, 1])
    add_trial(tmp_path, x=9)
    store = store_for(path)
    run_until(path, lambda: store.find_trial("2").status == TrialStatus.FAILED)
    assert store.find_trial("2").status == TrialStatus.FAILED  # crash loop, never heartbeat
    assert store.find_trial("0").status == TrialStatus.DEPLOYED  # kept its slot
    assert running_numbers(path) == [0, 1]
    assert "replaced" not in (store.find_trial("0").reason or "")


def test_a_deploy_by_hand_stays_within_capacity_plus_one(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, stages("good", max_deployments=1), trials=2)
    run_until(path, lambda: running_numbers(path) == [1])
    assert invoke("deploy", "0").exit_code == 0
    store = store_for(path)
    run_until(path, lambda: store.find_trial("1").status == TrialStatus.RETIRED
              and running_numbers(path) == [0])
    assert len(traders(tmp_path)) == 1
    invoke("stop", "--all")


@pytest.mark.parametrize("where", ["trial params", "stage params"])
def test_the_reference_trader_resolves_a_params_only_model(tmp_path: Path, where: str) -> None:
    from tests.optuna_helpers import make_study

    path = workspace(tmp_path, {
        "a": {"run": f"{FIX}:ok",
              "params": {} if where == "trial params" else {"strategy": "sma_cross"}},
        "deploy": {"command": ["{python}", "-m", "pipeline_v2.paper", "--model-dir",
                               "{model_dir}", "--run-dir", "{run_dir}", "--synthetic-bars",
                               "300", "--speed", "0"],
                   "gates": {"trades": ">= 0"}, "restart": {"backoff": [0.05, 0.1],
                                                           "max_crashes": 2}},
    }, trials=0)
    study = make_study(f"sqlite:///{tmp_path / 'optuna.db'}", "s")
    trial = study.ask()
    if where == "trial params":
        trial.suggest_categorical("strategy", ["sma_cross"])
    trial.suggest_int("fast", 5, 5)
    trial.suggest_int("slow", 20, 20)
    study.tell(trial, 1.0)
    assert run(path).idle
    store = store_for(path)
    trial_row = store.find_trial("0")
    assert trial_row.status == TrialStatus.VALIDATED, trial_row.reason
    assert not (tmp_path / "models").exists()  # no model.json: the params were the model


def test_no_verdict_before_min_bars_and_min_trades(tmp_path: Path, invoke) -> None:
    from pipeline_v2 import plan

    assert plan.evidence_shortfall({"bars": 20, "trades": 7}, 100, 5) == ["bars 20 of 100"]
    assert plan.evidence_shortfall({"trades": 1}, 100, 5) == ["bars 0 of 100", "trades 1 of 5"]
    assert plan.evidence_shortfall({"bars": 100, "trades": 5}, 100, 5) == []
    path = workspace(tmp_path, stages("slow_evidence", evaluate_after=0, min_bars=15,
                                      min_trades=5), trials=1)
    store = store_for(path)

    def notes() -> list[str]:
        return [e["message"] for e in store.events_of(store.find_trial("0").id)
                if e["kind"] == "deployment.evidence"]

    run_until(path, lambda: bool(notes()))
    run(path, mode="forever", timeout=1.0)  # still no verdict, and no second note
    assert store.find_trial("0").status == TrialStatus.DEPLOYED
    assert notes() == ["not enough evidence yet: bars 1 of 15"]
    (Path(store.latest_deployment(store.find_trial("0").id).run_dir) / "enough").touch()
    run_until(path, lambda: store.find_trial("0").status == TrialStatus.VALIDATED)
    assert store.stages_of(store.find_trial("0").id)[1].results["bars"] == 200
    invoke("stop", "--all")


def test_a_finished_trader_with_too_little_evidence_is_not_validated(tmp_path: Path) -> None:
    path = workspace(tmp_path, stages("finish", min_bars=500), trials=1)
    assert run(path).idle
    trial = store_for(path).find_trial("0")
    assert trial.status == TrialStatus.RETIRED
    assert trial.reason == "not enough evidence: bars 200 of 500"
