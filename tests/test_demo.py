"""`pipeline demo` end to end: a real study, the daemon until idle, traders evaluated."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil

from pipeline_v2.config import load_config
from pipeline_v2.models import TrialStatus
from pipeline_v2.store import open_store


def test_demo_builds_and_runs_to_idle(invoke, tmp_path: Path) -> None:
    result = invoke("demo", "--dir", "ws", "--trials", "12")  # relative, as `make run` passes
    daemon_out = tmp_path / "ws" / "logs" / "daemon.out"
    assert result.exit_code == 0, (result.output, daemon_out.read_text())
    config = load_config(tmp_path / "ws" / "stages.json")
    store = open_store(config)
    trials = store.list_trials()
    assert len(trials) == 12
    assert not {t.status for t in trials} & {TrialStatus.PENDING, TrialStatus.PROCESSING,
                                             TrialStatus.DEPLOYED}
    validated = [t for t in trials if t.status == TrialStatus.VALIDATED]
    assert validated, ([(t.ref, t.status, t.reason) for t in trials], daemon_out.read_text())
    for dep in store.deployments():
        assert dep.status.value == "exited"
        assert not psutil.pid_exists(dep.pid) or psutil.Process(dep.pid).status() == "zombie"
    assert "trials ranked by backtest.sharpe" in result.stdout
    assert "probability of backtest overfitting" in result.stdout  # and the best trial's rules:
    assert "recommendation: " in result.stdout and "walk-forward folds" in result.stdout
    for page in (tmp_path / "ws").glob("report*.html"):
        ET.fromstring(page.read_text())
    assert len(list((tmp_path / "ws").glob("report*.html"))) == 2
    model = json.loads((tmp_path / "ws" / "models" / "trial_0" / "model.json").read_text())
    assert model["strategy"] in ("sma_cross", "mean_reversion")
    again = invoke("backtest", validated[0].ref, "--config", str(config.source), "--json")
    assert again.exit_code == 0, again.output
    metrics = json.loads(again.stdout)
    assert {"sharpe", "deflated_sharpe", "trades"} <= set(metrics)
    assert 0 < metrics["deflated_sharpe"] < 1


def test_demo_refuses_a_folder_that_is_not_a_demo(invoke, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = invoke("demo", "--dir", str(tmp_path / "mine"), "--no-run")
    assert result.exit_code == 2
    assert result.stderr == (f'error: --dir: "{tmp_path / "mine"}" exists and is not a demo '
                             "workspace (no .pipeline-demo); choose an empty or new folder\n")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
