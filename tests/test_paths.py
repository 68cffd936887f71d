"""One rule for relative paths: the config's folder is the working directory of every stage and
trader, and is on the import path of callable stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_v2.backtest.data import save_csv
from pipeline_v2.backtest.model import save_model
from pipeline_v2.backtest.synthetic import regime_bars
from pipeline_v2.models import StageStatus, TrialStatus
from tests.engine_helpers import run, store_for, workspace

STAGE_MODULE = '''
from pathlib import Path


def run(ctx):
    return {"sharpe": 1.0, "cwd_has_config": Path("stages.json").exists()}
'''
COMMAND_STAGE = '''
import json, os
from pathlib import Path
with open(os.environ["PIPELINE_RESULT_FILE"], "w") as fh:
    json.dump({"sharpe": 1.0, "cwd_has_config": Path("stages.json").exists()}, fh)
'''


pytestmark = pytest.mark.usefixtures("no_trader_outlives_its_test")


def test_stages_and_trader_run_in_the_config_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my_stage.py").write_text(STAGE_MODULE)
    (tmp_path / "cmd_stage.py").write_text(COMMAND_STAGE)
    save_model(tmp_path / "models" / "trial_0", "sma_cross", {"fast": 5, "slow": 20})
    (tmp_path / "data").mkdir()
    save_csv(regime_bars(300, 1), tmp_path / "data" / "prices.csv")
    path = workspace(tmp_path, {
        "callable": {"run": "my_stage:run"},
        "command": {"command": ["{python}", "cmd_stage.py"]},
        "deploy": {"command": ["{python}", "-m", "pipeline_v2.paper", "--model-dir",
                               "{model_dir}", "--run-dir", "{run_dir}", "--feed",
                               "data/prices.csv", "--speed", "0"],
                   "gates": {"bars": "== 300"}, "restart": {"max_crashes": 1}},
    }, trials=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the daemon's own cwd must not matter
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p != str(tmp_path)])
    assert run(path).idle
    store = store_for(path)
    trial = store.find_trial("0")
    stages = store.stages_of(trial.id)
    assert [s.status for s in stages[:2]] == [StageStatus.PASSED, StageStatus.PASSED], [
        s.error_message for s in stages]
    assert stages[0].results["cwd_has_config"] and stages[1].results["cwd_has_config"]
    assert trial.status == TrialStatus.VALIDATED, trial.reason  # the feed was found


def test_config_check_imports_a_stage_module_beside_the_config(tmp_path: Path, invoke,
                                                                monkeypatch) -> None:
    import sys

    (tmp_path / "beside_stage.py").write_text(STAGE_MODULE)
    workspace(tmp_path, {"callable": {"run": "beside_stage:run"}})
    monkeypatch.setattr("sys.path", [p for p in sys.path if p not in ("", str(tmp_path))])
    result = invoke("config", "check")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.endswith("run in file order: callable)\n")
