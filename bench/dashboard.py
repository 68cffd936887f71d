"""Server time of the dashboard's pages with 100,000 trials in the state DB (target: < 50 ms).

The DB is built with bulk SQL (trials, three stage rows each with results, an event per stage,
a few deployments); each page is answered by the server's own handler, median of several runs.
`python -m bench.dashboard` prints the figures and writes bench/results/dashboard.json.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline_v2.config import load_config
from pipeline_v2.http.server import HttpService
from pipeline_v2.store import open_store

TRIALS = 100_000
STAGES = ("backtest", "stress", "paper")
TARGET_S = 0.050
PAGES = {
    "overview /": "/",
    "trials page 1": "/ui/trials",
    "trials filtered+sorted, deep page": "/ui/trials?status=rejected&sort=value&desc=1"
                                         "&offset=20000",
    "trials by study, page 100": "/ui/trials?study=s1&offset=5000",
    "one trial": "/ui/trials/s0:777",
    "one trial's report (not a target: the study's PBO)": "/ui/trials/s0:777/report",
    "overview fragments (poll)": "/?fragments=1",
    "/metrics (a Prometheus scrape)": "/metrics",
}


def build(folder: Path) -> Path:
    """A workspace whose state DB holds TRIALS trials, built with executemany."""
    path = folder / "stages.json"
    path.write_text(json.dumps({
        "optuna": {"storage": f"sqlite:///{folder / 'optuna.db'}", "studies": ["s0", "s1"]},
        "stages": {name: {"run": "bench.noop:run"} for name in STAGES},
    }))
    config = load_config(path)
    store = open_store(config)
    rng = random.Random(7)
    statuses = ["rejected"] * 6 + ["failed", "passed", "retired", "pending"]
    trials, stages, events = [], [], []
    now = 1.7e9
    for i in range(TRIALS):
        status = rng.choice(statuses)
        study = f"s{i % 2}"
        trials.append((i + 1, study, i // 2, status, 1 if status != "passed" else 2,
                       rng.gauss(0, 1), now + i, now + i))
        for pos, name in enumerate(STAGES):
            done = pos == 0 or status == "passed"
            stage_status = ("passed" if done and status != "rejected" else
                            "rejected" if done else "pending")
            results = json.dumps({"sharpe": rng.gauss(1, 1), "total_return": rng.random()}
                                 ) if done else None
            stages.append((i + 1, name, pos, stage_status, results, now + i))
            if done:
                events.append((now + i, i + 1, name, f"stage.{stage_status}", "running",
                               stage_status))
    conn = store.conn
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO trials (id, study, trial_number, status, stage_pos, value,"
                     " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", trials)
    conn.executemany("INSERT INTO stages (trial_id, stage_name, position, status, results,"
                     " updated_at) VALUES (?, ?, ?, ?, ?, ?)", stages)
    conn.executemany("INSERT INTO events (ts, trial_id, stage, kind, old_status, new_status)"
                     " VALUES (?, ?, ?, ?, ?, ?)", events)
    conn.executemany("INSERT INTO deployments (trial_id, status, run_dir, restarts, updated_at)"
                     " VALUES (?, 'running', ?, 0, ?)",
                     [(t[0], str(folder / f"run{t[0]}"), now) for t in trials[:5]])
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    store.close()
    return path


def measure(path: Path, repeat: int = 9) -> dict[str, float]:
    """Median handler time per page."""
    config = load_config(path)
    service = HttpService(lambda: config, address="127.0.0.1:0")
    service.bound = ("127.0.0.1", 0)  # answer in-process: the server's own code, no socket
    times = {}
    for name, url in PAGES.items():
        response = service.handle("GET", url, {})
        assert response.status == 200, (url, response.body[:300])
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            service.handle("GET", url, {})
            samples.append(time.perf_counter() - started)
        times[name] = statistics.median(samples)
    service.stop()
    return times


def main() -> None:
    """Build, measure, print and save the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        path = build(Path(tmp))
        times = measure(path)
    rows = {name: round(t * 1000, 2) for name, t in times.items()}
    for name, figure in rows.items():
        note = "met" if figure < TARGET_S * 1000 else "NOT met"
        print(f"{name:<60}{figure:>10.2f} ms   target < {TARGET_S * 1000:.0f} ms: {note}")
    out = Path(__file__).resolve().parent / "results" / "dashboard.json"
    out.parent.mkdir(exist_ok=True)
    payload: dict[str, Any] = {"trials": TRIALS, "target_ms": TARGET_S * 1000, "ms": rows,
                               "loadavg": os.getloadavg()[0]}
    out.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
