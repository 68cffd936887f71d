"""The reference paper trader: resume after a kill, SIGTERM, stop-loss priority, position cap,
broker faults."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline_v2.backtest import backtest
from pipeline_v2.backtest.data import from_arrays
from pipeline_v2.backtest.model import save_model
from pipeline_v2.backtest.synthetic import regime_bars
from pipeline_v2.paper.trader import Broker, Trader

PARAMS = {"fast": 5, "slow": 20}


def model(tmp_path: Path, **paper) -> Path:
    directory = tmp_path / "model"
    save_model(directory, "sma_cross", PARAMS, paper={"synthetic_bars": 400, "seed": 4,
                                                      "speed": 0, **paper})
    return directory


def trader_cmd(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline_v2.paper", "--model-dir", str(model_dir),
            "--run-dir", str(run_dir), *extra]


def state(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


def test_matches_the_backtest_without_a_stop(tmp_path: Path) -> None:
    result = subprocess.run(trader_cmd(model(tmp_path, stop_loss=0), tmp_path / "run"),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    expected, _ = backtest(regime_bars(400, 4), "sma_cross", PARAMS, 0.0005, 0.0005)
    assert metrics["finished"] is True and metrics["bars"] == 400
    assert metrics["total_return"] == pytest.approx(expected["total_return"], rel=1e-12)
    assert metrics["trades"] == expected["trades"]
    assert {"equity", "total_return", "sharpe", "max_drawdown", "trades", "updated_at"} <= set(
        metrics)


def test_resumes_the_same_position_after_a_kill(tmp_path: Path) -> None:
    model_dir = model(tmp_path, speed=400)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(trader_cmd(model_dir, run_dir), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if (run_dir / "state.json").exists() and state(run_dir)["cursor"] > 150:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = state(run_dir)
    assert 150 < before["cursor"] < 400
    restarted = subprocess.run(trader_cmd(model_dir, run_dir, "--speed", "0"),
                               capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stderr
    first = json.loads(restarted.stdout.splitlines()[0])
    assert first["resume_at"] == before["cursor"]
    uninterrupted = subprocess.run(trader_cmd(model_dir, tmp_path / "clean", "--speed", "0"),
                                   capture_output=True, text=True)
    assert uninterrupted.returncode == 0
    resumed = json.loads((run_dir / "metrics.json").read_text())
    clean = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    assert resumed["equity"] == clean["equity"]
    assert resumed["trades"] == clean["trades"]


def test_sigterm_flushes_and_exits_zero(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(trader_cmd(model(tmp_path, speed=50), run_dir),
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not (run_dir / "heartbeat").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["bars"] == state(run_dir)["cursor"] and not metrics["finished"]


def _bars(closes: list[float], lows: list[float] | None = None):
    closes_arr = np.array(closes, dtype=float)
    opens = np.concatenate(([closes_arr[0]], closes_arr[:-1]))
    lows_arr = np.minimum(opens, closes_arr) * 0.999 if lows is None else np.array(lows)
    highs = np.maximum(opens, closes_arr) * 1.001
    days = np.busday_offset(np.datetime64("2022-01-03"), np.arange(len(closes)), roll="forward")
    return from_arrays(days, opens, highs, lows_arr, closes_arr)


def test_stop_loss_takes_priority_and_blocks_re_entry(tmp_path: Path) -> None:
    closes = [100.0, 99, 98, 97, 96, 95, 96, 98, 100, 102, 104, 106, 108, 110, 112, 114]
    lows = list(np.minimum(np.concatenate(([100.0], closes[:-1])), closes) * 0.999)
    lows[12] = 90.0  # an intrabar spike far below the 5 % stop while the trend still says long
    bars = _bars(closes, lows)
    trader = Trader(tmp_path, bars, "sma_cross", {"fast": 2, "slow": 4}, Broker(0, 0, 0, 1),
                    stop_loss=0.05)
    assert trader.run() == 0
    fills = [json.loads(line) for line in (tmp_path / "fills.jsonl").read_text().splitlines()]
    reasons = [f["reason"] for f in fills]
    assert reasons == ["signal", "stop_loss"]
    entry = fills[0]["price"]
    assert fills[1]["price"] == entry * 0.95
    assert trader.state.units == 0  # still long signal, but no re-entry after the stop


def test_position_cap(tmp_path: Path) -> None:
    bars = regime_bars(200, 4)
    trader = Trader(tmp_path, bars, "sma_cross", PARAMS, Broker(0, 0, 0, 1), stop_loss=0,
                    max_position=0.5)
    assert trader.run() == 0
    first = json.loads((tmp_path / "fills.jsonl").read_text().splitlines()[0])
    assert abs(first["units"] * first["price"]) == 0.5 * 10_000


def test_a_failing_broker_flattens_and_exits_3(tmp_path: Path) -> None:
    result = subprocess.run(trader_cmd(model(tmp_path), tmp_path / "run", "--fault-rate", "1"),
                            capture_output=True, text=True)
    assert result.returncode == 3
    assert result.stderr == ("paper: the broker kept failing; position flattened, stopping "
                             "with exit code 3\n")
    assert state(tmp_path / "run")["units"] == 0


def test_stdout_lines_carry_a_timestamp_for_pipeline_logs(tmp_path: Path) -> None:
    # Untimed, `pipeline logs TRIAL` showed paper_stopped at the trader's start time, before
    # the deployment's first heartbeat.
    from pipeline_v2.logview import parse_line

    result = subprocess.run(trader_cmd(model(tmp_path), tmp_path / "run"),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = [parse_line(line, "trader") for line in result.stdout.splitlines()]
    assert [line.data["event"] for line in lines] == ["paper_started", "paper_stopped"]
    assert all(line.ts is not None for line in lines) and lines[0].ts <= lines[1].ts
