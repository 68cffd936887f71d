"""The examples run end to end: the RL policy through backtest, stress, a command stage in
sh + awk and paper trading; the awk backtest agrees with the reference engine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline_v2.backtest import backtest, load_bars
from pipeline_v2.backtest.data import save_csv
from pipeline_v2.backtest.plugins import decide, incremental_positions, load_strategy
from pipeline_v2.backtest.synthetic import regime_bars
from pipeline_v2.models import StageStatus, TrialStatus
from tests.engine_helpers import ROOT, store_for

EXAMPLES = ROOT / "examples"
AWK_BACKTEST = EXAMPLES / "command_stage" / "sma_cross.sh"


@pytest.fixture
def train(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from rl_policy import train

    return train


def test_the_rl_example_runs_through_the_whole_pipeline(tmp_path: Path, train) -> None:
    config = train.build(tmp_path / "ws", trials=2, bars_n=400, iterations=2, population=4,
                         scenarios=8, paper_speed=0)
    assert train.run_pipeline(config, timeout=60) == 0
    store = store_for(config)
    trials = store.list_trials()
    assert len(trials) == 2
    assert {t.status for t in trials} <= {TrialStatus.VALIDATED, TrialStatus.RETIRED,
                                          TrialStatus.REJECTED}
    traded = [t for t in trials if t.status != TrialStatus.REJECTED]
    assert traded, [t.reason for t in trials]
    run_dirs = {d.trial_id: Path(d.run_dir) for d in store.deployments()}
    for trial in traded:
        stages = {s.name: s for s in store.stages_of(trial.id)}
        assert stages["backtest"].status == StageStatus.PASSED
        assert stages["cge_stress"].results["scenarios"] == 8
        assert set(stages["baseline"].results) == {"total_return", "sharpe", "max_drawdown",
                                                   "trades", "win_rate", "bars"}
        paper = json.loads((run_dirs[trial.id] / "metrics.json").read_text())
        assert paper["finished"] is True
    model_dir = Path(trials[0].model_dir)
    assert json.loads((model_dir / "model.json").read_text())["strategy"] == train.PLUGIN
    assert (model_dir / "weights.npy").exists()


def test_the_trained_policy_decides_the_same_bar_by_bar(tmp_path: Path, train) -> None:
    config = train.build(tmp_path / "ws", trials=1, bars_n=300, iterations=1, population=4,
                         scenarios=8, paper_speed=0)
    model_dir = config.parent / "models" / "trial_0"
    model = json.loads((model_dir / "model.json").read_text())
    bars = load_bars(config.parent / "data" / "market.csv")
    vectorised = decide(load_strategy(model["strategy"], model["params"], model_dir), bars)
    incremental = incremental_positions(load_strategy(model["strategy"], model["params"],
                                                      model_dir), bars)
    assert np.array_equal(incremental, vectorised)
    backtest(bars, model["strategy"], model["params"], model_dir=model_dir, lookahead=True)


def test_the_awk_backtest_agrees_with_the_engine(tmp_path: Path) -> None:
    data = tmp_path / "market.csv"
    save_csv(regime_bars(800, 3), data)
    result_file = tmp_path / "result.json"
    done = subprocess.run(["sh", str(AWK_BACKTEST), str(data), "2017-06-01", "10", "40"],
                          env={"PIPELINE_RESULT_FILE": str(result_file), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    theirs = json.loads(result_file.read_text())
    ours, _ = backtest(load_bars(data).window("2017-06-01"), "sma_cross",
                       {"fast": 10, "slow": 40}, 0.0, 0.0)
    assert theirs["trades"] == ours["trades"] > 0
    assert theirs["bars"] == ours["bars"]
    for key in ("total_return", "sharpe", "max_drawdown", "win_rate"):
        assert theirs[key] == pytest.approx(ours[key], rel=1e-9), key


def test_the_awk_backtest_fails_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(["sh", str(AWK_BACKTEST), str(tmp_path / "none.csv"), "2020-01-01",
                           "10", "40"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == f"sma_cross.sh: {tmp_path / 'none.csv'}: no such data file\n"

