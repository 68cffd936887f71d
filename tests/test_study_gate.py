"""The builtin backtest keeps return series and folds; `study.pbo` gates hold promotion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline_v2.backtest.series import load_returns
from pipeline_v2.models import TrialStatus
from pipeline_v2.reports.study import StudyCache, study_metrics
from tests.engine_helpers import run, store_for
from tests.report_helpers import builtin_stages, builtin_workspace


def test_study_pbo_gate_holds_promotion_until_it_passes(tmp_path: Path) -> None:
    path = builtin_workspace(tmp_path, builtin_stages({"study.pbo": "< 0", "sharpe": ">= 0.5"}))
    run(path)
    store = store_for(path)
    assert {t.status for t in store.list_trials()} == {TrialStatus.PASSED}
    assert store.deployments() == []
    study = study_metrics(store, "s")
    assert 0.0 <= study["pbo"] <= 1.0 and study["trials"] == 6
    assert study["n_combinations"] == 12870 and study["stage"] == "backtest"

    raw = json.loads(path.read_text())
    raw["stages"]["deploy"]["gates"]["study.pbo"] = "<= 1"
    raw["stages"]["deploy"]["max_deployments"] = 6
    path.write_text(json.dumps(raw))
    run(path)
    assert {t.status for t in store.list_trials()} == {TrialStatus.VALIDATED}


def test_a_study_gate_that_comes_to_pass_deploys_in_the_same_run(tmp_path: Path) -> None:
    # Backtest then deploy: the first trial passes when one series exists (held); the other
    # backtests finish within the 30 s throttle, and the daemon must not call itself idle
    # before it recomputes.
    stages = builtin_stages({"study.trials": ">= 4", "study.pbo": "<= 1", "sharpe": ">= 0.5"})
    del stages["stress"]
    stages["deploy"]["max_deployments"] = 4
    path = builtin_workspace(tmp_path, stages, trials=4, workers=1)
    run(path)
    assert {t.status for t in store_for(path).list_trials()} == {TrialStatus.VALIDATED}


def test_a_validation_stage_reads_the_study_namespace(tmp_path: Path) -> None:
    # A trial's check runs after its own backtest: its study has at least that series.
    stages = {"backtest": builtin_stages()["backtest"],
              "check": {"run": "tests.fixtures.stages:ok", "max_attempts": 1,
                        "gates": {"study.trials": ">= 1"}}}
    path = builtin_workspace(tmp_path, stages, trials=3)
    run(path)
    store = store_for(path)
    assert [(t.status, t.reason) for t in store.list_trials()] == [
        (TrialStatus.PASSED, None)] * 3  # read, not "study.trials missing"


def test_backtest_results_keep_series_and_folds(tmp_path: Path) -> None:
    path = builtin_workspace(tmp_path, {"backtest": builtin_stages()["backtest"]}, trials=2)
    run(path)
    store = store_for(path)
    results = store.stage_results(store.list_trials()[0].id)["backtest"]
    times, returns = load_returns(results["returns_file"])
    assert len(times) == len(returns) == results["bars"] - 1 == 599
    with np.load(results["returns_file"]) as raw:
        assert raw["returns"].dtype == np.float32  # 12 bytes a bar with the timestamp
    sharpes = [f["sharpe"] for f in results["folds"]]
    assert [(f["test_start"], f["test_end"]) for f in results["folds"]] == [
        (360, 440), (440, 520), (520, 600)]
    assert results["worst_fold_sharpe"] == min(sharpes)
    assert results["fold_sharpe_std"] == float(np.std(sharpes, ddof=1))
    assert results["dsr_inputs"]["n_trials"] == 6
    assert results["dsr_inputs"]["deflated_sharpe"] == results["deflated_sharpe"]


def test_study_cache_recomputes_when_a_stage_finished_at_most_every_interval(
        tmp_path: Path) -> None:
    path = builtin_workspace(tmp_path, {"backtest": builtin_stages()["backtest"]}, trials=3)
    run(path)
    store = store_for(path)
    now = [100.0]
    cache = StudyCache(min_interval=30.0, clock=lambda: now[0])
    first = cache.get(store, "s")
    assert first["trials"] == 3
    with store.transaction():
        store.conn.execute("UPDATE stages SET finished_at = finished_at + 1 WHERE id = 1")
    now[0] += 10
    assert cache.get(store, "s") is first  # too soon after the last computation
    now[0] += 21
    second = cache.get(store, "s")
    assert second is not first and second["trials"] == 3
    now[0] += 100
    assert cache.get(store, "s") is second  # nothing finished since


def test_config_check_knows_the_study_namespace(invoke, tmp_path: Path) -> None:
    raw = {"stages": {"backtest": {"run": "pipeline_v2.stages.builtin:backtest"},
                      "deploy": {"gates": {"study.pbo": "<= 0.5", "study.pbos": "<= 0.5"}}}}
    (tmp_path / "stages.json").write_text(json.dumps(raw))
    result = invoke("config", "check")
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "error: stages.json: stages.deploy.gates.study.pbos: unknown study metric (expected "
        "one of pbo, trials, observations, slope, intercept, prob_oos_loss, n_combinations)\n")
    del raw["stages"]["deploy"]["gates"]["study.pbos"]
    (tmp_path / "stages.json").write_text(json.dumps(raw))
    result = invoke("config", "check")
    assert result.exit_code == 0, result.output


PLUGIN = '''
import json
from pathlib import Path

import numpy as np

from pipeline_v2.backtest.plugins import Strategy


class Follow(Strategy):
    """Long after the close rose over `lag` bars; the lag lives in the model artifact."""

    def __init__(self, params, model_dir):
        super().__init__(params, model_dir)
        self.lag = json.loads((Path(model_dir) / "weights.json").read_text())["lag"]

    def positions(self, bars):
        close = np.asarray(bars.close)
        out = np.zeros(len(close))
        out[self.lag:] = close[self.lag:] > close[:-self.lag]
        return out
'''


def test_folds_run_the_resolved_plugin_with_its_model_dir(tmp_path: Path) -> None:
    # A plug-in that needs its model_dir (like the RL policy): every fold must run it too.
    (tmp_path / "followplug.py").write_text(PLUGIN)
    stages = {"backtest": builtin_stages()["backtest"]}
    path = builtin_workspace(tmp_path, stages, trials=1, workers=1)
    model_dir = tmp_path / "models" / "0"
    (model_dir / "model.json").write_text(json.dumps({"strategy": "followplug:Follow",
                                                      "params": {}}))
    (model_dir / "weights.json").write_text(json.dumps({"lag": 5}))
    run(path)
    store = store_for(path)
    [trial] = store.list_trials()
    assert trial.status == TrialStatus.PASSED, (trial.reason, store.stages_of(trial.id))
    results = store.stage_results(trial.id)["backtest"]
    assert results["fold_count"] == 3 and len(results["folds"]) == 3
