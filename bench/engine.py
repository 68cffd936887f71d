"""N trials through 3 no-op callable stages (`run-daemon --until-idle`), beside huey.

The peer is huey's SqliteHuey running the same 3-task chain per trial with 2 process workers,
in the same run on the same machine. Both are durable SQLite queues; we also write an audit
event per transition and keep the stage schedule in the same DB.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import CACHE, QUICK, ROOT, case
from bench.fixtures import STUDY, copy_db, optuna_study

N_TRIALS = 200 if QUICK else 1000
REPEATS = 2 if QUICK else 5
STAGES = 3

HUEY_TASKS = """
import os
from huey import SqliteHuey
huey = SqliteHuey(filename=os.environ["HUEY_DB"], results=True)

@huey.task()
def stage(*args):
    # In a chain the parent's result comes first: (previous, trial, n).
    return {"args": len(args), "ok": 1.0}
"""


def run_ours(work: Path) -> tuple[float, float]:
    """Seconds for the discovery pass, then for every stage attempt until idle."""
    for leftover in work.glob("pipeline_v2.db*"):
        leftover.unlink()
    shutil.rmtree(work / "logs", ignore_errors=True)
    config = str(work / "stages.json")
    base = [sys.executable, "-m", "pipeline_v2"]
    started = time.perf_counter()
    subprocess.run([*base, "discover", "--config", config], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    discovered = time.perf_counter()
    subprocess.run([*base, "run-daemon", "--until-idle", "--config", config], check=True,
                   cwd=ROOT, stderr=subprocess.DEVNULL)
    return discovered - started, time.perf_counter() - discovered


def run_huey(work: Path) -> float:
    """Seconds for huey's consumer to finish N 3-task chains enqueued beforehand."""
    db = work / "huey.db"
    for leftover in work.glob("huey.db*"):
        leftover.unlink()
    (work / "huey_tasks.py").write_text(HUEY_TASKS)
    env = dict(os.environ, HUEY_DB=str(db), PYTHONPATH=str(work))
    enqueue = (
        "from huey_tasks import stage, huey\n"
        f"for t in range({N_TRIALS}):\n"
        "    huey.enqueue(stage.s(t, 0).then(stage, t, 1).then(stage, t, 2))\n"
    )
    subprocess.run([sys.executable, "-c", enqueue], check=True, env=env, cwd=work)
    started = time.perf_counter()
    consumer = subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "huey_tasks.huey", "-w", "2", "-k",
         "process", "-d", "0.001", "-n"],
        env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import sqlite3

    try:
        while True:
            time.sleep(0.05)
            try:
                with sqlite3.connect(db, timeout=30) as conn:
                    queued = conn.execute("SELECT COUNT(*) FROM task").fetchone()[0]
                    results = conn.execute("SELECT COUNT(*) FROM kv").fetchone()[0]
            except sqlite3.OperationalError:  # huey creates its tables lazily
                continue
            if queued == 0 and results >= N_TRIALS * STAGES:
                break
        return time.perf_counter() - started
    finally:
        consumer.send_signal(signal.SIGINT)
        consumer.wait(timeout=30)


def run() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / "engine_run"
    work.mkdir(exist_ok=True)
    storage = work / "optuna.db"
    copy_db(optuna_study(N_TRIALS), storage)
    raw = {
        "optuna": {"storage": "sqlite:///optuna.db", "studies": [STUDY]},
        "daemon": {"workers": 2},
        "stages": {f"noop{i}": {"run": "bench.noop:run"} for i in range(STAGES)},
    }
    (work / "stages.json").write_text(json.dumps(raw))
    attempts = N_TRIALS * STAGES
    ours, huey = [], []
    for _ in range(REPEATS):  # interleaved, so a burst of load hits both alike
        ours.append(run_ours(work)[1] / attempts * 1000)
        huey.append(run_huey(work) / attempts * 1000)
    case("engine", f"per stage attempt, {N_TRIALS:,} trials x {STAGES} no-op stages, "
         f"{REPEATS} runs", "ms", ours, peer="huey SqliteHuey", peer_samples=huey,
         note="amortised wall time until idle / all chains done, 2 workers each")
