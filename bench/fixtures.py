"""Big inputs built fast with set-based SQL, cached under bench/.cache/.

- An Optuna SQLite study of N COMPLETE trials: Optuna creates the schema and one trial, then
  `WITH RECURSIVE` inserts add the rest with rows shaped exactly like Optuna's own.
- A pipeline state DB of N trials (25 % passed and waiting for a deploy slot, 75 % rejected at
  the backtest), with their stage rows and events, migrated by our own Store.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

from bench.common import CACHE

STUDY = "big"
STAGES = ("backtest", "stress", "deploy")
DIST_FAST = json.dumps({"name": "IntDistribution",
                        "attributes": {"log": False, "step": 1, "low": 2, "high": 50}})
DIST_Z = json.dumps({"name": "FloatDistribution",
                     "attributes": {"step": None, "low": 0.0, "high": 1.0, "log": False}})
SERIES = "WITH RECURSIVE c(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM c WHERE i < ?) "


def optuna_study(n: int) -> Path:
    """A cached Optuna SQLite storage with one study of n COMPLETE trials."""
    path = CACHE / f"optuna_{n}.db"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"  building a {n:,}-trial Optuna study (cached)...", flush=True)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(storage=f"sqlite:///{tmp}", study_name=STUDY)
        study.optimize(lambda t: t.suggest_int("fast", 2, 50) + t.suggest_float("z", 0, 1), 1)
        del study
        add_trials(tmp, n - 1)
        tmp.rename(path)
    return path


def add_trials(path: Path, n: int) -> None:
    """Append n COMPLETE trials (value, 2 params, 1 user attr) to the study, set-based."""
    conn = sqlite3.connect(path)
    study_id, last, top = conn.execute(
        "SELECT study_id, MAX(number), (SELECT MAX(trial_id) FROM trials) FROM trials").fetchone()
    now = time.strftime("%Y-%m-%d %H:%M:%S.000000")
    with conn:
        conn.execute(SERIES + "INSERT INTO trials (number, study_id, state, datetime_start,"
                     " datetime_complete) SELECT i, ?, 'COMPLETE', ?, ? FROM c",
                     [last + 1, last + n, study_id, now, now])
        new = "FROM trials WHERE trial_id > ?"
        conn.execute("INSERT INTO trial_values (trial_id, objective, value, value_type)"
                     f" SELECT trial_id, 0, number * 0.001, 'FINITE' {new}", [top])
        conn.execute("INSERT INTO trial_params (trial_id, param_name, param_value,"
                     f" distribution_json) SELECT trial_id, 'fast', number % 49 + 2, ? {new}",
                     [DIST_FAST, top])
        conn.execute("INSERT INTO trial_params (trial_id, param_name, param_value,"
                     f" distribution_json) SELECT trial_id, 'z', 0.5, ? {new}", [DIST_Z, top])
        conn.execute("INSERT INTO trial_user_attributes (trial_id, key, value_json)"
                     f" SELECT trial_id, 'model_dir', '\"models/trial_' || number || '\"' {new}",
                     [top])
    conn.close()


def state_db(n: int) -> Path:
    """A cached state DB with n trials: every 4th passed (sharpe in backtest results, its
    deploy stage pending), the rest rejected at the backtest."""
    from pipeline_v2 import schema
    from pipeline_v2.store import Store

    # Keyed by the schema version: a DB built by an older checkout is not reused.
    path = CACHE / f"state_{n}_v{len(schema.known_migrations())}.db"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"  building a {n:,}-trial state DB (cached)...", flush=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    Store(tmp).close()  # the schema, by our own migrations
    conn = sqlite3.connect(tmp)
    now = time.time()
    with conn:
        conn.execute(
            SERIES + "INSERT INTO trials (id, study, study_id, trial_number, optuna_trial_id,"
            " status, stage_pos, value, params, user_attrs, created_at, updated_at)"
            " SELECT i, ?, 1, i - 1, i, CASE WHEN i % 4 = 0 THEN 'passed' ELSE 'rejected' END,"
            " CASE WHEN i % 4 = 0 THEN 2 ELSE 0 END, (i * 7919 % 100003) / 100003.0,"
            " '{\"fast\": ' || (i % 49 + 2) || ', \"z\": 0.5}', '{}', ?, ? FROM c",
            [1, n, STUDY, now, now])
        for pos, name in enumerate(STAGES):
            status = {0: "CASE WHEN t.status = 'passed' THEN 'passed' ELSE 'rejected' END",
                      1: "CASE WHEN t.status = 'passed' THEN 'passed' ELSE 'pending' END",
                      2: "'pending'"}[pos]
            # (|| binds tighter than / in SQLite: the number is parenthesised)
            sharpe = "(((t.id * 104729) % 1000003) / 250000.0)"
            results = (f"CASE WHEN t.status = 'passed' THEN '{{\"sharpe\": ' || {sharpe}"
                       " || '}' END") if pos < 2 else "NULL"
            conn.execute(
                "INSERT INTO stages (trial_id, stage_name, position, status, attempts, results,"
                f" started_at, finished_at, updated_at) SELECT t.id, ?, ?, {status},"
                f" {1 if pos < 2 else 0}, {results}, ?, ?, ? FROM trials t",
                [name, pos, now, now, now])
        conn.execute(
            "INSERT INTO events (ts, trial_id, kind, new_status, message) SELECT ?, id,"
            " 'trial.discovered', 'pending', study || ':' || trial_number FROM trials", [now])
        conn.execute(
            "INSERT INTO events (ts, trial_id, kind, old_status, new_status) SELECT ?, id,"
            " 'trial.' || status, 'processing', status FROM trials", [now])
    conn.close()
    store = Store(tmp)
    store.ensure_rank_index("backtest.sharpe")  # as the daemon makes it, once per DB
    store.close()
    tmp.rename(path)
    return path


def copy_db(source: Path, target: Path) -> Path:
    """A private copy of a cached DB (and nothing of a previous copy's WAL)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(target.name + "*"):
        leftover.unlink()
    shutil.copyfile(source, target)
    return target


def workspace(work: Path, state: Path, storage: Path | None, traders: int,
              trader: list[str] | None = None) -> Path:
    """Write a stages.json for a bench workspace; returns its path.

    The stages are placeholders (every trial has already passed or been rejected) except the
    deploy stage, which supervises `traders` copies of `sleep` (no heartbeat expected)."""
    work.mkdir(parents=True, exist_ok=True)
    stages: dict[str, object] = {
        "backtest": {"run": "bench.noop:run"},
        "stress": {"run": "bench.noop:run"},
        "deploy": {"kind": "deploy", "enabled": traders > 0, "max_deployments": max(1, traders),
                   "rank_by": "backtest.sharpe", "command": trader or ["sleep", "infinity"],
                   "timeout_seconds": 3600, "heartbeat_timeout": 3600, "evaluate_after": "30d",
                   "stop_grace_seconds": 2},
    }
    raw = {
        "optuna": {"storage": f"sqlite:///{storage}" if storage else f"sqlite:///{work}/none.db",
                   "studies": [STUDY]},
        "state_db": str(state),
        "logs_dir": str(work / "logs"),
        "daemon": {"check_interval": 3600 if storage is None else 60},
        "stages": stages,
    }
    path = work / "stages.json"
    path.write_text(json.dumps(raw, indent=1))
    return path
