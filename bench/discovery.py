"""Discovery on a 100,000-trial SQLite study (QUICK: 5,000), beside Optuna in the same run.

A poll with nothing new and one with 100 new trials (in-process, beside `study.get_trials()`),
and process start to first completed poll against a COLD (empty) state DB, with its peak RSS,
beside a process that loads the study with Optuna and reads its trials.
"""

from __future__ import annotations

import json

from bench.common import CACHE, QUICK, case, repeats, run_child, timed
from bench.fixtures import STUDY, add_trials, copy_db, optuna_study

N = 5_000 if QUICK else 100_000


def run() -> None:
    from pipeline_v2.config import parse_config
    from pipeline_v2.discovery import Discovery
    from pipeline_v2.store import Store

    work = CACHE / "discovery_run"
    storage = copy_db(optuna_study(N), work / "optuna.db")
    for leftover in work.glob("p.db*"):
        leftover.unlink()
    raw = {"optuna": {"storage": f"sqlite:///{storage}", "studies": [STUDY]},
           "state_db": "p.db", "stages": {"noop": {"run": "bench.noop:run"}}}
    (work / "stages.json").write_text(json.dumps(raw))
    cold_ours = [run_child(["-m", "pipeline_v2", "discover", "-c", str(work / "stages.json")])]
    for leftover in work.glob("p.db*"):  # cold again for the in-process polls
        leftover.unlink()
    peer_script = (
        "import optuna; optuna.logging.set_verbosity(optuna.logging.WARNING);"
        f"optuna.load_study(study_name={STUDY!r}, storage={f'sqlite:///{storage}'!r})"
        ".get_trials()")
    cold_peer = [run_child(["-c", peer_script])]
    case("discovery", f"process start -> first poll done, {N:,} trials, cold state DB", "s",
         [w for w, _ in cold_ours], peer="optuna load_study + get_trials",
         peer_samples=[w for w, _ in cold_peer])
    case("discovery", "peak RSS of that process", "MB", [p for _, p in cold_ours],
         peer="optuna", peer_samples=[p for _, p in cold_peer])

    config = parse_config(raw, base_dir=str(work))
    store = Store(config.state_db_path)
    discovery = Discovery(config, store)
    first = discovery.poll()
    if first.total != N:
        raise RuntimeError(f"the in-process catch-up found {first.total} of {N}: {first}")
    idle = timed(discovery.poll, repeats(200, 20))
    with_100 = []
    for _ in range(repeats(10, 3)):
        add_trials(storage, 100)
        with_100 += timed(discovery.poll, 1)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{storage}")
    peer = timed(study.get_trials, 1)  # tens of seconds at 100k: once
    case("discovery", f"poll, nothing new, {N:,} trials", "ms", [s * 1000 for s in idle],
         peer="study.get_trials()", peer_samples=[s * 1000 for s in peer], target=1)
    case("discovery", "poll, 100 new trials", "ms", [s * 1000 for s in with_100],
         peer="study.get_trials()", peer_samples=[s * 1000 for s in peer])
    store.close()
