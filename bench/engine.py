"""10,000 trials through 3 no-op callable stages (`run-daemon --until-idle`), beside huey.

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

from bench.common import CACHE, ROOT, report
from bench.discovery import build_study

N_TRIALS = int(os.environ.get("BENCH_ENGINE_TRIALS", "10000"))
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
            with sqlite3.connect(db, timeout=30) as conn:
                queued = conn.execute("SELECT COUNT(*) FROM task").fetchone()[0]
                results = conn.execute("SELECT COUNT(*) FROM kv").fetchone()[0]
            if queued == 0 and results >= N_TRIALS * STAGES:
                break
        return time.perf_counter() - started
    finally:
        consumer.send_signal(signal.SIGINT)
        consumer.wait(timeout=30)


def main() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / "engine_run"
    work.mkdir(exist_ok=True)
    storage = work / "optuna.db"
    if not storage.exists() or json.loads((work / "n.json").read_text()) != N_TRIALS:
        storage.unlink(missing_ok=True)
        build_study(storage, N_TRIALS)
        (work / "n.json").write_text(json.dumps(N_TRIALS))
    raw = {
        "optuna": {"storage": "sqlite:///optuna.db", "studies": ["big"]},
        "daemon": {"workers": 2, "http": None},
        "stages": {f"noop{i}": {"run": "bench.noop:run"} for i in range(STAGES)},
    }
    (work / "stages.json").write_text(json.dumps(raw))
    attempts = N_TRIALS * STAGES
    discovery_s, ours_s = run_ours(work)
    huey_s = run_huey(work)
    ours_ms, huey_ms = ours_s / attempts * 1000, huey_s / attempts * 1000
    report(
        "engine",
        [
            (f"{N_TRIALS} trials x {STAGES} no-op stages", f"{ours_s:.1f} s", f"{huey_s:.1f} s",
             "wall time until idle / all chains done"),
            ("per stage attempt (amortised)", f"{ours_ms:.3f} ms", f"{huey_ms:.3f} ms",
             f"{huey_ms / ours_ms:.1f}x huey; target <= 1 ms"),
            ("discovery of the trials (before)", f"{discovery_s:.1f} s", "-",
             "not counted above"),
        ],
        {"trials": N_TRIALS, "stages": STAGES, "workers": 2},
    )


if __name__ == "__main__":
    main()
