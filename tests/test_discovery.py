"""Discovery against real Optuna storages (SQLite and journal file): once each, never twice."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from pipeline_v2.config import parse_config
from pipeline_v2.discovery import Discovery
from pipeline_v2.models import StageStatus, TrialStatus
from pipeline_v2.store import Store
from tests.optuna_helpers import STORAGE_KINDS, complete, make_study, storage_url

pytestmark = pytest.mark.parametrize("kind", STORAGE_KINDS)


def setup(tmp_path: Path, kind: str, **optuna_cfg):
    url = storage_url(kind, tmp_path)
    config = parse_config(
        {"optuna": {"storage": url, "studies": ["*"], **optuna_cfg}, "state_db": "p.db"},
        base_dir=str(tmp_path),
    )
    store = Store(config.state_db_path)
    return url, config, store


def refs(store: Store) -> list[str]:
    return sorted(t.ref for t in store.list_trials())


def test_two_studies_with_colliding_numbers(tmp_path: Path, kind: str) -> None:
    url, config, store = setup(tmp_path, kind)
    complete(make_study(url, "a"), 3, 1.0)
    complete(make_study(url, "b"), 2, 2.0)
    result = Discovery(config, store).poll()
    assert result.new == {"a": 3, "b": 2}
    assert refs(store) == ["a:0", "a:1", "a:2", "b:0", "b:1"]
    assert store.find_trial("b:1").value == 2.0
    assert Discovery(config, store).poll().total == 0


def test_record_holds_values_params_attrs_and_stages(tmp_path: Path, kind: str) -> None:
    url, config, store = setup(tmp_path, kind, model_dir="{user_attrs[model_dir]}")
    study = make_study(url, "s")
    trial = study.ask()
    trial.suggest_int("fast", 2, 20)
    trial.suggest_float("lr", 1e-3, 1.0, log=True)
    trial.suggest_categorical("side", ["long", "short"])
    trial.set_user_attr("model_dir", "models/m0")
    study.tell(trial, 0.5)
    Discovery(config, store).poll()
    row = store.find_trial("s:0")
    assert row.params == trial.params
    assert isinstance(row.params["fast"], int) and row.params["side"] in ("long", "short")
    assert row.user_attrs == {"model_dir": "models/m0"}
    assert row.model_dir == str(tmp_path / "models" / "m0")
    assert row.status == TrialStatus.PENDING
    statuses = [(s.name, s.status) for s in store.stages_of(row.id)]
    assert statuses == [
        ("backtest", StageStatus.PENDING),
        ("cge_stress", StageStatus.SKIPPED),
        ("deploy", StageStatus.PENDING),
    ]


def test_multi_objective(tmp_path: Path, kind: str) -> None:
    url, config, store = setup(tmp_path, kind)
    study = make_study(url, "mo", directions=["maximize", "minimize"])
    trial = study.ask()
    trial.suggest_int("x", 0, 5)
    study.tell(trial, [1.5, 0.25])
    Discovery(config, store).poll()
    row = store.find_trial("mo:0")
    assert row.values == [1.5, 0.25]
    assert row.value is None


def test_unfinished_trials_are_found_when_they_complete(tmp_path: Path, kind: str) -> None:
    url, config, store = setup(tmp_path, kind)
    study = make_study(url, "s")
    running = study.ask()
    pruned = study.ask()
    failed = study.ask()
    study.enqueue_trial({"x": 7})
    complete(study, 1)  # runs the enqueued trial: number 3
    waiting_later = study.enqueue_trial({"x": 8}) or None  # number 4, stays WAITING
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    discovery = Discovery(config, store)
    assert discovery.poll().new == {"s": 1}
    assert refs(store) == ["s:3"]
    study.tell(running, 3.0)
    assert discovery.poll().new == {"s": 1}
    complete(study, 1)  # picks up the waiting trial 4
    assert discovery.poll().new == {"s": 1}
    assert refs(store) == ["s:0", "s:3", "s:4"]
    assert waiting_later is None
    assert discovery.poll().total == 0


def test_states_option_discovers_pruned(tmp_path: Path, kind: str) -> None:
    url, config, store = setup(tmp_path, kind, states=["COMPLETE", "PRUNED"])
    study = make_study(url, "s")
    trial = study.ask()
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert Discovery(config, store).poll().total == 1


def test_infinite_value_is_recorded_and_flagged(tmp_path: Path, kind: str) -> None:
    url, config, store = setup(tmp_path, kind)
    study = make_study(url, "s")
    trial = study.ask()
    study.tell(trial, float("inf"))
    Discovery(config, store).poll()
    row = store.find_trial("s:0")
    assert row.value == math.inf
    assert row.flags == ["non_finite_value"]


def test_restart_in_the_middle_keeps_the_cursor(tmp_path: Path, kind: str) -> None:
    url, config, store = setup(tmp_path, kind)
    study = make_study(url, "s")
    complete(study, 3)
    running = study.ask()
    assert Discovery(config, store).poll().total == 3
    store.close()
    store = Store(config.state_db_path)  # a new daemon process
    study.tell(running, 1.0)
    complete(study, 2)
    result = Discovery(config, store).poll()
    assert result.total == 3
    assert len(store.list_trials()) == 6


def test_recreated_study_is_new_and_old_records_stay(tmp_path: Path, kind: str) -> None:
    url, config, store = setup(tmp_path, kind)
    complete(make_study(url, "s"), 2, 1.0)
    discovery = Discovery(config, store)
    discovery.poll()
    optuna.delete_study(study_name="s", storage=make_study(url, "s")._storage)
    complete(make_study(url, "s"), 1, 9.0)
    assert discovery.poll().new == {"s": 1}
    rows = store.list_trials()
    assert [(t.number, t.value) for t in rows] == [(0, 1.0), (1, 1.0), (0, 9.0)]
    assert [t.generation for t in rows] == [0, 0, 1]
    assert store.find_trial("s:0").value == 9.0  # the newest generation wins


def test_concurrent_writers_every_trial_exactly_once(tmp_path: Path, kind: str) -> None:
    url, config, store = setup(tmp_path, kind)
    make_study(url, "s")
    writer = textwrap.dedent(
        f"""
        import random, sys, time
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        import optuna
        from tests.optuna_helpers import make_study
        study = make_study({url!r}, "s")
        rng = random.Random(int(sys.argv[1]))
        def objective(trial):
            x = trial.suggest_int("x", 0, 100)
            time.sleep(rng.random() * 0.004)
            if x % 7 == 0:
                raise optuna.TrialPruned()
            return x
        study.optimize(objective, n_trials=15, catch=())
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(i)]) for i in range(4)]
    discovery = Discovery(config, store)
    polls = 0
    while any(p.poll() is None for p in procs) or polls == 0:
        discovery.poll()
        polls += 1
    assert [p.wait() for p in procs] == [0, 0, 0, 0]
    discovery.poll()
    done = {
        t.number for t in make_study(url, "s").get_trials(states=[optuna.trial.TrialState.COMPLETE])
    }
    found = [t.number for t in store.list_trials()]
    assert len(found) == len(set(found))
    assert set(found) == done
    assert polls > 1


def test_missing_storage_is_a_health_entry_not_a_crash(tmp_path: Path, kind: str) -> None:
    _, config, store = setup(tmp_path, kind)
    result = Discovery(config, store).poll()
    assert result.errors and result.total == 0
    where = tmp_path / ("optuna.db" if kind == "sqlite" else "journal.log")
    noun = "SQLite file" if kind == "sqlite" else "journal file"
    assert result.errors == [f'optuna.storage: no {noun} at "{where}"']
    assert store.health()["discovery"]["status"] == "error"
    assert not where.exists()  # never created by the watcher


def test_discover_command(invoke, tmp_path: Path, kind: str) -> None:
    url = storage_url(kind, tmp_path)
    complete(make_study(url, "s"), 2)
    (tmp_path / "stages.json").write_text(
        json.dumps({"optuna": {"storage": url, "studies": ["s", "t"]}})
    )
    result = invoke("discover")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == ["s: 2 new trial(s)", "t: not in the storage (yet)"]
    assert lines[2].startswith("2 new in ") and lines[2].endswith(" ms")
    again = invoke("discover", "--json")
    assert json.loads(again.stdout)["new"] == {"s": 0}
