"""Discovery against real Optuna storages, one contract suite for every kind: SQLite and journal
files, PostgreSQL and MariaDB servers (read through a SELECT-only role). Once each, never twice."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from pipeline_v2 import discovery as discovery_module
from pipeline_v2.config import parse_config
from pipeline_v2.discovery import Discovery
from pipeline_v2.models import StageStatus, TrialStatus
from pipeline_v2.store import Store
from tests.optuna_helpers import Storage, complete, make_study
from tests.servers import READER_PASSWORD


def setup(tmp_path: Path, storage: Storage, **optuna_cfg):
    """(the writers' URL, a config that reads the storage as discovery does, the state DB)."""
    config = parse_config(
        {"optuna": {"storage": storage.reader, "studies": ["*"], **optuna_cfg},
         "state_db": "p.db"},
        base_dir=str(tmp_path),
    )
    store = Store(config.state_db_path)
    return storage.url, config, store


def refs(store: Store) -> list[str]:
    return sorted(t.ref for t in store.list_trials())



class TestDiscoveryContract:
    """The same guarantees from every storage kind."""

    def test_two_studies_with_colliding_numbers(self, tmp_path: Path, storage: Storage) -> None:
        url, config, store = setup(tmp_path, storage)
        complete(make_study(url, "a"), 3, 1.0)
        complete(make_study(url, "b"), 2, 2.0)
        result = Discovery(config, store).poll()
        assert result.new == {"a": 3, "b": 2}
        assert refs(store) == ["a:0", "a:1", "a:2", "b:0", "b:1"]
        assert store.find_trial("b:1").value == 2.0
        assert Discovery(config, store).poll().total == 0

    def test_record_holds_values_params_attrs_and_stages(
        self, tmp_path: Path, storage: Storage
    ) -> None:
        url, config, store = setup(tmp_path, storage, model_dir="{user_attrs[model_dir]}")
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

    def test_multi_objective(self, tmp_path: Path, storage: Storage) -> None:
        url, config, store = setup(tmp_path, storage)
        study = make_study(url, "mo", directions=["maximize", "minimize"])
        trial = study.ask()
        trial.suggest_int("x", 0, 5)
        study.tell(trial, [1.5, 0.25])
        Discovery(config, store).poll()
        row = store.find_trial("mo:0")
        assert row.values == [1.5, 0.25]
        assert row.value is None

    def test_unfinished_trials_are_found_when_they_complete(
        self, tmp_path: Path, storage: Storage
    ) -> None:
        url, config, store = setup(tmp_path, storage)
        study = make_study(url, "s")
        running = study.ask()
        pruned = study.ask()
        failed = study.ask()
        study.enqueue_trial({"x": 7})
        complete(study, 1)  # runs the enqueued trial: number 3
        study.enqueue_trial({"x": 8})  # number 4, stays WAITING
        study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
        study.tell(failed, state=optuna.trial.TrialState.FAIL)
        discovery = Discovery(config, store)
        assert discovery.poll().new == {"s": 1}
        assert refs(store) == ["s:3"]
        assert study.trials[4].state == optuna.trial.TrialState.WAITING  # seen, not recorded
        study.tell(running, 3.0)
        assert discovery.poll().new == {"s": 1}
        complete(study, 1)  # picks up the waiting trial 4
        assert discovery.poll().new == {"s": 1}
        assert refs(store) == ["s:0", "s:3", "s:4"]
        assert store.find_trial("s:4").params == {"x": 8}
        assert discovery.poll().total == 0

    def test_states_option_discovers_pruned(self, tmp_path: Path, storage: Storage) -> None:
        url, config, store = setup(tmp_path, storage, states=["COMPLETE", "PRUNED"])
        study = make_study(url, "s")
        trial = study.ask()
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        assert Discovery(config, store).poll().total == 1

    def test_infinite_value_is_recorded_and_flagged(self, tmp_path: Path, storage: Storage) -> None:
        url, config, store = setup(tmp_path, storage)
        study = make_study(url, "s")
        trial = study.ask()
        study.tell(trial, float("inf"))
        Discovery(config, store).poll()
        row = store.find_trial("s:0")
        assert row.value == math.inf
        assert row.flags == ["non_finite_value"]

    def test_a_sliced_catch_up_records_every_trial_once(
        self, tmp_path: Path, storage: Storage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The daemon's polls stop at their time slice (here: after every page beyond the
        cursor) and go on where they stopped; a trial finishing meanwhile is still seen."""
        monkeypatch.setattr(discovery_module, "PAGE", 3)
        url, config, store = setup(tmp_path, storage)
        study = make_study(url, "s")
        complete(study, 10, 1.0)
        running = study.ask()  # number 10, finishes mid-catch-up
        complete(study, 2, 1.0)
        discovery = Discovery(config, store, slice_seconds=0.0)
        polls = []
        while not polls or polls[-1].more:
            polls.append(discovery.poll())
            if len(polls) == 2:
                study.tell(running, 2.0)
            assert len(polls) < 20
        assert [p.total for p in polls[:3]] == [3, 3, 3]  # one page of new trials per poll
        assert sum(p.total for p in polls) == 13
        assert refs(store) == sorted(f"s:{n}" for n in range(13))
        assert discovery.poll().total == 0

    def test_restart_in_the_middle_keeps_the_cursor(self, tmp_path: Path, storage: Storage) -> None:
        url, config, store = setup(tmp_path, storage)
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

    def test_recreated_study_is_new_and_old_records_stay(
        self, tmp_path: Path, storage: Storage
    ) -> None:
        url, config, store = setup(tmp_path, storage)
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

    def test_concurrent_writers_every_trial_exactly_once(
        self, tmp_path: Path, storage: Storage
    ) -> None:
        url, config, store = setup(tmp_path, storage)
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
            t.number
            for t in make_study(url, "s").get_trials(states=[optuna.trial.TrialState.COMPLETE])
        }
        found = [t.number for t in store.list_trials()]
        assert len(found) == len(set(found))
        assert set(found) == done
        assert polls > 1

    def test_missing_storage_is_a_health_entry_not_a_crash(
        self, tmp_path: Path, storage: Storage
    ) -> None:
        _, config, store = setup(tmp_path, Storage(storage.kind, "", storage.missing, ""))
        result = Discovery(config, store).poll()
        assert result.errors and result.total == 0
        health = store.health()["discovery"]
        assert health["status"] == "error"
        if storage.kind in ("sqlite", "journal"):
            where = tmp_path / ("optuna.db" if storage.kind == "sqlite" else "journal.log")
            noun = "SQLite file" if storage.kind == "sqlite" else "journal file"
            assert result.errors == [f'optuna.storage: no {noun} at "{where}"']
            assert not where.exists()  # never created by the watcher
        else:
            shown = storage.missing.replace(READER_PASSWORD, "***")
            assert result.errors[0].startswith(f"optuna.storage: cannot read '{shown}': ")
            assert "pv2_no_such_db" in result.errors[0]
            assert READER_PASSWORD not in json.dumps(health)

    def test_unknown_schema_revision_is_refused(self, tmp_path: Path, storage: Storage) -> None:
        if storage.kind == "journal":
            pytest.skip("a journal file has no schema revision")
        url, config, store = setup(tmp_path, storage)
        complete(make_study(url, "s"), 1)
        set_revision(url, "v9.9.9")
        try:
            result = Discovery(config, store).poll()
        finally:
            set_revision(url, "v3.2.0.a")
        assert result.errors == [
            "optuna.storage: unknown Optuna schema revision 'v9.9.9' "
            "(known: v3.0.0.c, v3.0.0.d, v3.2.0.a); upgrade pipeline_v2"
        ]
        assert store.list_trials() == []
        assert Discovery(config, store).poll().total == 1

    def test_discover_command(self, invoke, tmp_path: Path, storage: Storage) -> None:
        complete(make_study(storage.url, "s"), 2)
        (tmp_path / "stages.json").write_text(
            json.dumps({"optuna": {"storage": storage.reader, "studies": ["s", "t"]}})
        )
        result = invoke("discover")
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[:2] == ["s: 2 new trial(s)", "t: not in the storage (yet)"]
        assert lines[2].startswith("2 new in ") and lines[2].endswith(" ms")
        again = invoke("discover", "--json")
        assert json.loads(again.stdout)["new"] == {"s": 0}
        status = invoke("status", "--json")
        assert status.exit_code == 0, status.output
        assert READER_PASSWORD not in status.stdout

    def test_a_catch_up_reads_and_records_a_page_at_a_time(
        self, tmp_path: Path, storage: Storage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import pipeline_v2.discovery as discovery_module

        monkeypatch.setattr(discovery_module, "PAGE", 3)
        url, config, store = setup(tmp_path, storage)
        study = make_study(url, "s")
        complete(study, 10, 1.0)
        running = study.ask()  # open: re-checked every poll until it finishes
        discovery = Discovery(config, store)
        pages: list[int] = []
        details = discovery.source.details
        monkeypatch.setattr(discovery.source, "details",
                            lambda s, heads: pages.append(len(heads)) or details(s, heads))
        assert discovery.poll().total == 10
        assert max(pages) <= 3 and sum(pages) == 10
        assert refs(store) == [f"s:{n}" for n in range(10)]
        study.tell(running, 2.0)
        complete(study, 4, 1.0)
        assert discovery.poll().new == {"s": 5}
        assert discovery.poll().total == 0
        assert len(refs(store)) == 15

    def test_interleaved_studies_read_by_pages_keep_their_own_records(
        self, tmp_path: Path, storage: Storage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A page is read as one id range (dense ids) or as a list (sparse ids): trials of the
        other study inside that range never leak into this one's records."""
        import pipeline_v2.discovery as discovery_module

        monkeypatch.setattr(discovery_module, "PAGE", 3)
        url, config, store = setup(tmp_path, storage)
        a, b = make_study(url, "a"), make_study(url, "b")
        for n in range(5):  # a, b, a, b, ...: a page of a's trials spans b's
            for study, value in ((a, 1.0), (b, 2.0)):
                trial = study.ask()
                trial.suggest_int(study.study_name, 0, 100)
                trial.set_user_attr("of", study.study_name)
                study.tell(trial, value + n)
        complete(b, 8, 9.0)  # a's sixth trial after a gap: its page is read as a list
        complete(a, 1, 7.0)
        assert Discovery(config, store).poll().new == {"a": 6, "b": 13}
        for trial in store.list_trials():
            name = trial.study
            expected = {"a": 1.0, "b": 2.0}[name] + trial.number if trial.number < 5 else (
                7.0 if name == "a" else 9.0)
            assert trial.value == expected, trial.ref
            assert set(trial.params) == ({name} if trial.number < 5 else {"x"}), trial.ref
            assert trial.user_attrs == ({"of": name} if trial.number < 5 else {}), trial.ref


def set_revision(url: str, revision: str) -> None:
    """Stamp the storage's alembic revision as Optuna's owner would."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    engine.dispose()


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_reader_role_cannot_write(request: pytest.FixtureRequest, kind: str) -> None:
    """The suite's reader really has only SELECT, so every contract test proves read-only use."""
    import sqlalchemy as sa

    server = request.getfixturevalue(f"{kind}_server")
    if isinstance(server, str):
        pytest.skip(server)
    from pipeline_v2.optuna_source import server_url

    engine = sa.create_engine(server_url(server.reader))
    with pytest.raises(sa.exc.DBAPIError, match="denied"), engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM studies"))
    engine.dispose()


@pytest.mark.parametrize(
    ("url", "module", "message"),
    [
        ("postgresql://u:pw@127.0.0.1:1/db", "psycopg2",
         "optuna.storage: postgresql+psycopg2 needs its driver: "
         "pip install 'pipeline_v2[postgres]'"),
        ("mysql://u:pw@127.0.0.1:1/db", "pymysql",
         "optuna.storage: mysql+pymysql needs its driver: pip install 'pipeline_v2[mysql]'"),
    ],
)
def test_missing_driver_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, message: str
) -> None:
    from pipeline_v2.errors import StorageError
    from pipeline_v2.optuna_source import open_source

    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "MySQLdb", None)
    with pytest.raises(StorageError) as caught:
        open_source(url)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://ro:hunter2@db.example:5432/optuna", "postgresql://ro:***@db.example:5432/optuna"),
        ("mysql+pymysql://ro:p%40ss@h/o", "mysql+pymysql://ro:***@h/o"),
        ("sqlite:////tmp/optuna.db", "sqlite:////tmp/optuna.db"),  # the empty host stays
        ("sqlite:///rel/optuna.db", "sqlite:///rel/optuna.db"),
        ("/tmp/journal.log", "/tmp/journal.log"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    from pipeline_v2.redact import redact_url

    assert redact_url(url) == shown


def test_model_dirs_resolve_as_config_path_does(tmp_path: Path) -> None:
    """The per-folder shortcut gives what Path.resolve() gives: through a symlinked folder,
    a trial folder that is itself a symlink, "..", an absolute path and "~"."""
    from pipeline_v2.discovery import PathResolver

    (tmp_path / "real" / "trial_2").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "models").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "trial_3").symlink_to(tmp_path / "elsewhere")
    config = parse_config({"state_db": "p.db"}, base_dir=str(tmp_path))
    resolve = PathResolver(config)
    texts = ["models/trial_1", "models/trial_2", "models/trial_3", "models/trial_3/",
             "models/../x/trial_4",
             "real/./trial_5/", str(tmp_path / "abs" / "t6"), "~/t7", "."]
    assert [resolve(t) for t in texts] == [str(config.path(t)) for t in texts]
    assert resolve("models/trial_3/") == str(tmp_path / "elsewhere")
