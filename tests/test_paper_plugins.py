"""The paper trader runs plug-ins incrementally: the same decisions and fills as the backtest,
state rebuilt on a restart, and a plug-in that breaks the contract stops it with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_v2.backtest import backtest
from pipeline_v2.backtest.model import save_model
from pipeline_v2.backtest.synthetic import regime_bars
from pipeline_v2.paper.trader import Broker, Trader
from tests.engine_helpers import ROOT

EMA = "tests.fixtures.strategies:EmaTrend"
PARAMS = {"fast": 4, "slow": 16}


def test_a_stateful_fractional_plugin_trades_as_the_backtest(tmp_path: Path) -> None:
    bars = regime_bars(300, 5)
    trader = Trader(tmp_path, bars, EMA, PARAMS, Broker(0.0005, 0.0005, 0.0, 1), stop_loss=0)
    assert trader.run() == 0
    expected, run = backtest(bars, EMA, PARAMS, 0.0005, 0.0005)
    metrics = trader.metrics()
    assert metrics["total_return"] == pytest.approx(expected["total_return"], rel=1e-12)
    assert metrics["trades"] == expected["trades"] > 0
    assert metrics["position"] == run.held[-1]
    fills = (tmp_path / "fills.jsonl").read_text().splitlines()
    assert len(fills) > 2 * expected["trades"]  # partial rebalances between entries and exits


def test_a_restart_rebuilds_the_plugins_state(tmp_path: Path) -> None:
    bars = regime_bars(300, 5)
    broker = lambda: Broker(0.0005, 0.0005, 0.0, 1)  # noqa: E731
    first = Trader(tmp_path / "run", bars, EMA, PARAMS, broker(), stop_loss=0.03)
    (tmp_path / "run").mkdir()
    for _ in range(140):
        first.tick()
    first.persist()
    resumed = Trader(tmp_path / "run", bars, EMA, PARAMS, broker(), stop_loss=0.03)
    assert resumed.state.cursor == 140
    assert resumed.run() == 0
    (tmp_path / "clean").mkdir()
    clean = Trader(tmp_path / "clean", bars, EMA, PARAMS, broker(), stop_loss=0.03)
    assert clean.run() == 0
    assert resumed.metrics()["equity"] == clean.metrics()["equity"]
    assert resumed.state.fills == clean.state.fills


def _paper(tmp_path: Path, strategy: str, params: dict) -> subprocess.CompletedProcess[str]:
    model_dir = tmp_path / "model"
    save_model(model_dir, strategy, params,
               paper={"synthetic_bars": 120, "seed": 4, "speed": 0, "stop_loss": 0})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pipeline_v2.paper", "--model-dir",
                           str(model_dir), "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env)


def test_the_paper_process_runs_a_plugin_named_in_model_json(tmp_path: Path) -> None:
    result = _paper(tmp_path, EMA, PARAMS)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    expected, _ = backtest(regime_bars(120, 4), EMA, PARAMS, 0.0005, 0.0005)
    assert metrics["finished"] is True
    assert metrics["total_return"] == pytest.approx(expected["total_return"], rel=1e-12)


@pytest.mark.parametrize(("strategy", "params", "message"), [
    ("tests.fixtures.strategies:Broken", {"mode": "big"},
     "paper: tests.fixtures.strategies:Broken: position at bar 3 (2016-01-07T00:00:00) is 1.5; "
     "expected a number in [-1, 1] (1 bad bar(s))\n"),
    ("nowhere.strat:Foo", {}, "paper: cannot import \"nowhere.strat:Foo\": No module named "
                              "'nowhere'\n"),
])
def test_a_plugin_that_breaks_the_contract_stops_the_trader(tmp_path: Path, strategy: str,
                                                            params: dict, message: str) -> None:
    result = _paper(tmp_path, strategy, params)
    assert result.returncode == 2
    assert result.stderr == message


def test_a_halt_leaves_no_target_behind(tmp_path: Path) -> None:
    bars = regime_bars(300, 5)
    trader = Trader(tmp_path, bars, EMA, PARAMS, Broker(0, 0, 0.5, 0), stop_loss=0)
    assert trader.run() == 3
    fills = [json.loads(line) for line in (tmp_path / "fills.jsonl").read_text().splitlines()]
    assert fills[-1]["reason"] == "emergency_flatten"
    assert (trader.state.units, trader.state.held) == (0.0, 0.0)  # a restart re-enters
