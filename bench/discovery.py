"""Discovery on a 100,000-trial SQLite study, beside `study.get_trials()` in the same run.

Reports: a poll with nothing new, a poll with 100 new trials, process start to first completed
poll, and peak memory. The study is built once with Optuna (for the schema) and then filled by
bulk SQL with rows shaped exactly like Optuna's own, and cached under bench/.cache/.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from bench.common import CACHE, median_time, ms, report, run_child

N_TRIALS = 100_000
STUDY = "big"


def build_study(path: Path, n: int) -> None:
    """An Optuna SQLite storage with one study of `n` COMPLETE trials (2 params, 1 attr)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name=STUDY)
    study.optimize(lambda t: t.suggest_int("fast", 2, 50) + t.suggest_float("z", 0, 1), 1)
    add_trials(path, n - 1)


def add_trials(path: Path, n: int) -> None:
    """Append n COMPLETE trials to the study with plain SQL, as Optuna would store them."""
    conn = sqlite3.connect(path)
    study_id, first = conn.execute("SELECT study_id, MAX(number) FROM trials").fetchone()
    dist_fast = (
        '{"name": "IntDistribution", "attributes": {"log": false, "step": 1, "low": 2, "high": 50}}'
    )
    dist_z = (
        '{"name": "FloatDistribution", '
        '"attributes": {"step": null, "low": 0.0, "high": 1.0, "log": false}}'
    )
    now = time.strftime("%Y-%m-%d %H:%M:%S.000000")
    with conn:
        for number in range(first + 1, first + 1 + n):
            cur = conn.execute(
                "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete)"
                " VALUES (?, ?, 'COMPLETE', ?, ?)",
                (number, study_id, now, now),
            )
            tid = cur.lastrowid
            conn.execute(
                "INSERT INTO trial_values (trial_id, objective, value, value_type)"
                " VALUES (?, 0, ?, 'FINITE')",
                (tid, number * 0.001),
            )
            conn.executemany(
                "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)"
                " VALUES (?, ?, ?, ?)",
                [(tid, "fast", number % 49 + 2, dist_fast), (tid, "z", 0.5, dist_z)],
            )
            conn.execute(
                "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?, ?, ?)",
                (tid, "model_dir", json.dumps(f"models/trial_{number}")),
            )
    conn.close()


def main() -> None:
    from pipeline_v2.config import parse_config
    from pipeline_v2.discovery import Discovery
    from pipeline_v2.store import Store

    CACHE.mkdir(parents=True, exist_ok=True)
    cached = CACHE / f"optuna_{N_TRIALS}.db"
    if not cached.exists():
        print(f"building a {N_TRIALS}-trial study (once, cached)...", flush=True)
        build_study(cached, N_TRIALS)
    work = CACHE / "discovery_run"
    work.mkdir(exist_ok=True)
    storage = work / "optuna.db"
    storage.write_bytes(cached.read_bytes())
    for leftover in work.glob("p.db*"):
        leftover.unlink()
    raw = {
        "optuna": {"storage": f"sqlite:///{storage}", "studies": [STUDY]},
        "state_db": "p.db",
        "stages": {"noop": {"run": "bench.noop:run"}},
    }
    (work / "stages.json").write_text(json.dumps(raw))
    config = parse_config(raw, base_dir=str(work))
    store = Store(config.state_db_path)
    discovery = Discovery(config, store)

    started = time.perf_counter()
    first = discovery.poll()
    first_full = time.perf_counter() - started
    assert first.total == N_TRIALS, first

    idle = median_time(discovery.poll, 200)
    samples = []
    for _ in range(10):
        add_trials(storage, 100)
        started = time.perf_counter()
        result = discovery.poll()
        samples.append(time.perf_counter() - started)
        assert result.total == 100, result
    samples.sort()
    with_100 = samples[len(samples) // 2]

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{storage}")
    peer_poll = median_time(study.get_trials, 3)

    ours_start, ours_mem = run_child(
        "-m", "pipeline_v2", "discover", "--config", str(work / "stages.json")
    )
    peer_script = (
        "import optuna; optuna.logging.set_verbosity(optuna.logging.WARNING);"
        f"optuna.load_study(study_name={STUDY!r}, storage={f'sqlite:///{storage}'!r}).get_trials()"
    )
    peer_start, peer_mem = run_child("-c", peer_script)

    report(
        "discovery",
        [
            (
                "poll, nothing new (median of 200)",
                ms(idle),
                ms(peer_poll),
                f"{peer_poll / idle:,.0f}x faster; target <= 1 ms",
            ),
            (
                "poll, 100 new trials (median of 10)",
                ms(with_100),
                ms(peer_poll),
                f"{peer_poll / with_100:,.0f}x faster",
            ),
            (
                "process start -> first poll done",
                ms(ours_start),
                ms(peer_start),
                f"{peer_start / ours_start:.1f}x faster; target <= 2 s",
            ),
            (
                "peak memory of that process",
                f"{ours_mem:.0f} MB",
                f"{peer_mem:.0f} MB",
                "target <= 200 MB",
            ),
            ("first-ever poll (all 100k new)", ms(first_full), "-", "one-off catch-up"),
        ],
        {"trials": N_TRIALS},
    )


if __name__ == "__main__":
    main()
