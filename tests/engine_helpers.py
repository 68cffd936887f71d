"""Build a workspace with a real Optuna study and a stages.json, and run the daemon on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline_v2.config import load_config
from pipeline_v2.daemon import Daemon, RunSummary
from pipeline_v2.store import Store, open_store
from tests.optuna_helpers import make_study

ROOT = Path(__file__).resolve().parent.parent
FIX = "tests.fixtures.stages"


def workspace(tmp_path: Path, stages: dict[str, Any], trials: int = 1, study_name: str = "s",
              **extra: Any) -> Path:
    """A folder with an Optuna study of `trials` COMPLETE trials (x = 1..n) and a config."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = make_study(url, study_name)
    for i in range(trials):
        study.enqueue_trial({"x": i + 1})
        trial = study.ask()
        trial.suggest_int("x", 0, 100)
        study.tell(trial, float(i))
    raw = {
        "optuna": {"storage": url, "studies": [study_name]},
        "daemon": {"check_interval": 0.2, "workers": 2, "http": None},
        "retry": {"delays": [0.01]},
        "stages": stages,
        **extra,
    }
    path = tmp_path / "stages.json"
    path.write_text(json.dumps(raw))
    return path


def run(path: Path, mode: str = "until_idle", timeout: float = 30) -> RunSummary:
    """Run the daemon in this process."""
    return Daemon(path, mode=mode, timeout=timeout).run()  # type: ignore[arg-type]


def store_for(path: Path) -> Store:
    return open_store(load_config(path))


def wait_for(predicate, timeout: float = 20.0) -> None:
    """Poll until `predicate()` holds; fail the test if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def spawn_daemon(path: Path, *args: str) -> subprocess.Popen[bytes]:
    """The daemon as a real process, as systemd would run it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with (path.parent / "daemon.out").open("ab") as out:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline_v2", "run-daemon", "--config", str(path), *args],
            cwd=path.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
