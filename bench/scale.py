"""Scale-out: discovery against PostgreSQL at 100,000 trials, and stage throughput on Dask.

1. Discovery polls on a 100,000-trial study in a PostgreSQL storage (the machine's server on
   127.0.0.1:5432), beside Optuna's `study.get_trials()` on the same storage in the same run.
   Optuna creates the schema and the first trial; the rest are bulk-loaded with COPY, in rows
   shaped like Optuna's own, into a database kept on the server between runs (the COPY files
   are cached under bench/.cache/).
2. A CPU-bound callable stage over N trials with the local executor (2 worker processes) and a
   Dask LocalCluster of 1 and 2 worker processes, daemon `--until-idle` each time.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import CACHE, ROOT

RESULTS = ROOT / "bench" / "results"

N_TRIALS = 100_000
STUDY = "big"
PG_ADMIN = os.environ.get("BENCH_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
PG_DB = "pv2_bench_100k"
STAGE_TRIALS = int(os.environ.get("BENCH_STAGE_TRIALS", "12"))
STAGE_SPIN_S = 0.5


def median_time(fn: Any, repeat: int) -> float:
    """Median wall time of `fn` in seconds over `repeat` runs."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def ms(seconds: float) -> str:
    """Seconds as milliseconds text."""
    return f"{seconds * 1000:.3f} ms"


def report(name: str, rows: list[tuple[str, str, str, str]], extra: dict[str, Any]) -> None:
    """Print a table (metric, ours, peer, note) and save it under bench/results/."""
    width = max(len(r[0]) for r in rows) + 2 if rows else 10
    print(f"\n== {name} ==")
    print(f"{'metric':<{width}}{'pipeline_v2':>16}{'peer':>16}   note")
    for metric, ours, peer, note in rows:
        print(f"{metric:<{width}}{ours:>16}{peer:>16}   {note}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"rows": rows, **extra}, indent=2))


# -- 1. discovery on PostgreSQL -----------------------------------------------------------------

def _pg_url(database: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{database}"


def _copy_rows(first: int, n: int, trial_id0: int, study_id: int) -> dict[str, str]:
    """COPY text for n COMPLETE trials numbered from `first` with ids from `trial_id0`."""
    dist_fast = ('{"name": "IntDistribution", "attributes": '
                 '{"log": false, "step": 1, "low": 2, "high": 50}}')
    dist_z = ('{"name": "FloatDistribution", '
              '"attributes": {"step": null, "low": 0.0, "high": 1.0, "log": false}}')
    now = time.strftime("%Y-%m-%d %H:%M:%S.000000")
    trials, values, params, attrs = [], [], [], []
    for i in range(n):
        number, tid = first + i, trial_id0 + i
        trials.append(f"{tid}\t{number}\t{study_id}\tCOMPLETE\t{now}\t{now}")
        values.append(f"{tid}\t0\t{number * 0.001}\tFINITE")
        params.append(f"{tid}\tfast\t{number % 49 + 2}\t{dist_fast}")
        params.append(f"{tid}\tz\t0.5\t{dist_z}")
        attrs.append(f"{tid}\tmodel_dir\t{json.dumps(f'models/trial_{number}')}")
    return {"trials": "\n".join(trials), "values": "\n".join(values),
            "params": "\n".join(params), "attrs": "\n".join(attrs)}


def add_trials(url: str, n: int) -> None:
    """Append n COMPLETE trials to the study with COPY, as Optuna would store them."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SELECT study_id, MAX(number), MAX(trial_id) FROM trials GROUP BY study_id")
        study_id, last_number, last_id = cur.fetchone()
        cache = CACHE / f"pg_copy_{last_id + 1}_{n}.json"
        if cache.exists():
            rows = json.loads(cache.read_text())
        else:
            rows = _copy_rows(last_number + 1, n, last_id + 1, study_id)
            if n >= 10_000:
                cache.write_text(json.dumps(rows))
        for table, columns, key in (
            ("trials", "(trial_id, number, study_id, state, datetime_start, datetime_complete)",
             "trials"),
            ("trial_values", "(trial_id, objective, value, value_type)", "values"),
            ("trial_params", "(trial_id, param_name, param_value, distribution_json)", "params"),
            ("trial_user_attributes", "(trial_id, key, value_json)", "attrs"),
        ):
            cur.copy_expert(f"COPY {table} {columns} FROM STDIN", io.StringIO(rows[key]))
        cur.execute("SELECT setval('trials_trial_id_seq', (SELECT MAX(trial_id) FROM trials))")
        raw.commit()
    finally:
        raw.close()
        engine.dispose()


def ensure_pg_study() -> str:
    """The benchmark database with its 100k-trial study (built once, kept on the server)."""
    import optuna
    import sqlalchemy as sa

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    url = _pg_url(PG_DB)
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"),
                              {"d": PG_DB}).scalar()
    if exists:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            count = conn.execute(sa.text("SELECT COUNT(*) FROM trials")).scalar()
        engine.dispose()
        if count == N_TRIALS:
            admin.dispose()
            return url
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {PG_DB} WITH (FORCE)"))
    print(f"building a {N_TRIALS}-trial study in PostgreSQL (once, kept)...", flush=True)
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {PG_DB}"))
    admin.dispose()
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage, study_name=STUDY)
    study.optimize(lambda t: t.suggest_int("fast", 2, 50) + t.suggest_float("z", 0, 1), 1)
    storage.engine.dispose()
    CACHE.mkdir(parents=True, exist_ok=True)
    add_trials(url, N_TRIALS - 1)
    return url


def _reset_copy_of(url: str) -> str:
    """A scratch copy of the big database, so added trials never grow the cached one."""
    import sqlalchemy as sa

    scratch = PG_DB + "_run"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {scratch} TEMPLATE {PG_DB}"))
    admin.dispose()
    return _pg_url(scratch)


def _pg_answers() -> bool:
    import sqlalchemy as sa

    engine = sa.create_engine(PG_ADMIN, connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return True
    except sa.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def bench_discovery() -> list[tuple[str, str, str, str]]:
    """Discovery polls against PostgreSQL at 100k trials beside Optuna's get_trials."""
    import optuna

    from pipeline_v2.config import parse_config
    from pipeline_v2.discovery import Discovery
    from pipeline_v2.store import Store

    url = _reset_copy_of(ensure_pg_study())
    work = CACHE / "scale_run"
    work.mkdir(parents=True, exist_ok=True)
    for leftover in work.glob("p.db*"):
        leftover.unlink()
    raw = {"optuna": {"storage": url, "studies": [STUDY]}, "state_db": "p.db",
           "stages": {"noop": {"run": "bench.noop:run"}}}
    config = parse_config(raw, base_dir=str(work))
    store = Store(config.state_db_path)
    discovery = Discovery(config, store)
    started = time.perf_counter()
    first = discovery.poll()
    first_full = time.perf_counter() - started
    assert first.total == N_TRIALS, first
    idle = median_time(discovery.poll, 100)
    samples = []
    for _ in range(10):
        add_trials(url, 100)
        started = time.perf_counter()
        result = discovery.poll()
        samples.append(time.perf_counter() - started)
        assert result.total == 100, result
    with_100 = statistics.median(samples)
    discovery.close()
    store.close()
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    peer = median_time(study.get_trials, 3)
    storage.engine.dispose()
    return [
        ("PG poll, nothing new (median of 100)", ms(idle), ms(peer),
         f"{peer / idle:,.0f}x faster"),
        ("PG poll, 100 new trials (median of 10)", ms(with_100), ms(peer),
         f"{peer / with_100:,.0f}x faster"),
        ("PG first-ever poll (all 100k new)", ms(first_full), "-", "one-off catch-up"),
    ]


# -- 2. stage throughput: local vs Dask --------------------------------------------------------

def _run_daemon(work: Path, executor: str, workers: int) -> float:
    """Seconds for `--until-idle` to carry STAGE_TRIALS trials through one CPU-bound stage."""
    import optuna

    from pipeline_v2.daemon import Daemon

    for leftover in work.glob("*.db*"):
        leftover.unlink()
    storage = f"sqlite:///{work / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="cpu")
    for _ in range(STAGE_TRIALS):
        trial = study.ask()
        trial.suggest_int("x", 0, 9)
        study.tell(trial, 1.0)
    raw = {"optuna": {"storage": storage, "studies": ["cpu"]}, "state_db": "p.db",
           "daemon": {"workers": workers, "executor": executor, "check_interval": 3600},
           "stages": {"spin": {"run": "bench.noop:spin", "timeout_seconds": 120,
                               "params": {"seconds": STAGE_SPIN_S}}}}
    (work / "stages.json").write_text(json.dumps(raw))
    started = time.perf_counter()
    summary = Daemon(work / "stages.json", mode="until_idle", timeout=600).run()
    elapsed = time.perf_counter() - started
    assert summary.idle and summary.attempts == STAGE_TRIALS, summary
    return elapsed


def bench_executors() -> list[tuple[str, str, str, str]]:
    """Trials per second through a CPU-bound stage: local processes and Dask workers."""
    import optuna
    from distributed import LocalCluster

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = CACHE / "scale_exec"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    local = _run_daemon(work, "local", 2)
    rows.append(("local executor, 2 worker processes", f"{STAGE_TRIALS / local:.2f}/s", "-",
                 f"{STAGE_TRIALS} x {STAGE_SPIN_S}s CPU-bound"))
    for n in (1, 2):
        with LocalCluster(processes=True, n_workers=n, threads_per_worker=1,
                          dashboard_address=":0") as cluster:
            took = _run_daemon(work, cluster.scheduler_address, n)
        rows.append((f"Dask LocalCluster, {n} worker(s)", f"{STAGE_TRIALS / took:.2f}/s",
                     f"{STAGE_TRIALS / local:.2f}/s", f"{local / took:.2f}x the local executor"))
    return rows


def main(parts: list[str] | None = None) -> None:
    """Run both parts (or the named ones) and save bench/results/scale.json."""
    parts = parts or ["discovery", "executors"]
    rows: list[tuple[str, str, str, str]] = []
    extra: dict[str, Any] = {"trials": N_TRIALS, "stage_trials": STAGE_TRIALS,
                             "stage_seconds": STAGE_SPIN_S, "cpus": os.cpu_count()}
    if "discovery" in parts:
        if _pg_answers():
            rows += bench_discovery()
        else:
            print(f"scale: skipping the PostgreSQL discovery part: nothing answers at {PG_ADMIN}")
    if "executors" in parts:
        rows += bench_executors()
    report("scale", rows, extra)


if __name__ == "__main__":
    main(sys.argv[1:])
