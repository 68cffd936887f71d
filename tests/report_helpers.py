"""A workspace whose stages are the builtin backtest (with folds) and stress, and a fixture
trader for paper trading: what the reports read, produced by the real daemon."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pipeline_v2.backtest.data import save_csv
from pipeline_v2.backtest.model import save_model
from pipeline_v2.backtest.synthetic import regime_bars
from tests.optuna_helpers import make_study

ROOT = Path(__file__).resolve().parent.parent
TRADER = str(ROOT / "tests" / "fixtures" / "trader.py")
PARAMS = [(5, 20), (8, 30), (10, 40), (3, 15), (12, 50), (6, 25)]


def builtin_stages(deploy_gates: dict[str, str] | None = None) -> dict[str, Any]:
    """backtest (anchored folds) -> stress -> deploy the fixture trader (finishes at once)."""
    return {
        "backtest": {"run": "pipeline_v2.stages.builtin:backtest", "max_attempts": 1,
                     "params": {"data": "market.csv", "folds": {"count": 3, "test_bars": 80},
                                "dsr_trials": 6, "dsr_sharpe_variance": 0.5}},
        "stress": {"run": "pipeline_v2.stages.builtin:stress", "max_attempts": 1,
                   "params": {"data": "market.csv", "scenarios": 12, "start": "2016-06-01"}},
        "deploy": {"command": [sys.executable, TRADER, "finish", "{run_dir}", "0.8"],
                   "rank_by": "backtest.sharpe", "max_deployments": 2, "min_improvement": 0.05,
                   "stop_grace_seconds": 0.5, "heartbeat_timeout": 5, "evaluate_after": "1h",
                   "gates": deploy_gates or {"sharpe": ">= 0.5"}},
    }


def builtin_workspace(tmp_path: Path, stages: dict[str, Any] | None = None,
                      trials: int = len(PARAMS), workers: int = 2) -> Path:
    """Data, a real study of sma_cross trials (params name the strategy), and stages.json."""
    save_csv(regime_bars(600, 5), tmp_path / "market.csv")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = make_study(url, "s", direction="maximize")
    for i, (fast, slow) in enumerate(PARAMS[:trials]):
        study.enqueue_trial({"strategy": "sma_cross", "fast": fast, "slow": slow})
        trial = study.ask()
        trial.suggest_categorical("strategy", ["sma_cross"])
        trial.suggest_int("fast", 2, 20)
        trial.suggest_int("slow", 10, 60)
        trial.set_user_attr("in_sample_sharpe", 0.5 + 0.1 * i)
        study.tell(trial, 0.5 + 0.1 * i)
        save_model(tmp_path / "models" / str(i), "sma_cross", {"fast": fast, "slow": slow})
    raw = {"optuna": {"storage": url, "studies": ["s"], "model_dir": "models/{number}"},
           "daemon": {"check_interval": 0.2, "workers": workers, "http": None},
           "retry": {"delays": [0.01]}, "stages": stages or builtin_stages()}
    path = tmp_path / "stages.json"
    path.write_text(json.dumps(raw))
    return path
