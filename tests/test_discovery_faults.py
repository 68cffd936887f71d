"""Discovery when the Optuna storage file is deleted, replaced or write-locked under it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipeline_v2.config import parse_config
from pipeline_v2.discovery import Discovery
from pipeline_v2.optuna_source import POLL_BUSY_TIMEOUT_S, RdbSource
from pipeline_v2.status import pipeline_health
from pipeline_v2.store import Store
from tests.optuna_helpers import FILE_KINDS, STORAGE_KINDS, complete, make_study, storage_url


def setup(tmp_path: Path, kind: str):
    url = storage_url(kind, tmp_path)
    config = parse_config({"optuna": {"storage": url, "studies": ["s"]}, "state_db": "p.db"},
                          base_dir=str(tmp_path))
    return url, config, Store(config.state_db_path)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_deleted_then_recreated_storage_is_noticed(tmp_path: Path, kind: str) -> None:
    url, config, store = setup(tmp_path, kind)
    complete(make_study(url, "s"), 2)
    discovery = Discovery(config, store)
    assert discovery.poll().new == {"s": 2}
    storage = tmp_path / ("optuna.db" if kind == "sqlite" else "journal.log")
    storage.unlink()
    result = discovery.poll()
    assert result.errors == [
        f'optuna.storage: the storage file "{storage}" is missing (deleted or moved while the '
        "daemon runs); discovery resumes when it is back"]
    health = store.health()["discovery"]
    assert (health["status"], health["message"]) == ("degraded", result.errors[0])
    complete(make_study(url, "s"), 3)  # a new file, new trials
    result = discovery.poll()
    assert result.errors == [] and result.new == {"s": 3}
    assert [t.generation for t in store.list_trials()] == [0, 0, 1, 1, 1]
    assert store.health()["discovery"]["status"] == "ok"


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_storage_replaced_by_another_file_is_read_anew(tmp_path: Path, kind: str) -> None:
    url, config, store = setup(tmp_path, kind)
    complete(make_study(url, "s"), 1)
    discovery = Discovery(config, store)
    assert discovery.poll().total == 1
    storage = tmp_path / ("optuna.db" if kind == "sqlite" else "journal.log")
    other = tmp_path / "other"
    other.mkdir()
    complete(make_study(storage_url(kind, other), "s"), 4)
    (other / storage.name).rename(storage)  # atomically replaced, as a restore would
    result = discovery.poll()
    assert result.errors == [] and result.new == {"s": 4}


def test_a_write_locked_storage_skips_the_poll_without_stalling(tmp_path: Path) -> None:
    url, config, store = setup(tmp_path, "sqlite")
    complete(make_study(url, "s"), 2)
    discovery = Discovery(config, store)
    assert discovery.poll().total == 2
    source = discovery.source
    assert isinstance(source, RdbSource)
    assert source.busy_timeout == POLL_BUSY_TIMEOUT_S <= 0.1  # the most a poll waits
    complete(make_study(url, "s"), 1)
    locker = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        result = discovery.poll()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert result.errors == [
        "optuna.storage: busy (a writer holds a lock for more than 0.1s); this poll was "
        "skipped, the next one tries again"]
    health = store.health()
    assert health["discovery"]["status"] == "degraded"
    health["daemon"] = {"status": "running", "checked_at": 1e12}
    assert pipeline_health(health, config, 1e12) == "degraded"
    assert discovery.poll().new == {"s": 1}


def test_a_model_dir_template_that_raises_flags_the_trial(tmp_path: Path) -> None:
    url = storage_url("sqlite", tmp_path)
    config = parse_config({"optuna": {"storage": url, "studies": ["s"],
                                      "model_dir": "models/{user_attrs[n]:.2f}"},
                           "state_db": "p.db"}, base_dir=str(tmp_path))
    store = Store(config.state_db_path)
    study = make_study(url, "s")
    trial = study.ask()
    trial.set_user_attr("n", None)  # None cannot take a float format
    study.tell(trial, 1.0)
    result = Discovery(config, store).poll()
    assert result.errors == [] and result.new == {"s": 1}
    row = store.find_trial("s:0")
    assert row.model_dir == ""
    assert row.flags == ["model_dir_unresolved: TypeError('unsupported format string passed to "
                         "NoneType.__format__')"]


@pytest.mark.parametrize("flag", [(), ("--json",)], ids=["text", "json"])
@pytest.mark.parametrize("kind", FILE_KINDS)
def test_discover_with_a_missing_storage_prints_only_the_error(
        invoke, tmp_path: Path, kind: str, flag: tuple[str, ...]) -> None:
    """No "0 new in ... ms" before the error: the storage could not be read at all."""
    import json

    url = storage_url(kind, tmp_path)
    (tmp_path / "stages.json").write_text(json.dumps(
        {"optuna": {"storage": url, "studies": ["s"]}, "state_db": "p.db"}))
    result = invoke("discover", *flag)
    where = tmp_path / ("optuna.db" if kind == "sqlite" else "journal.log")
    noun = "SQLite file" if kind == "sqlite" else "journal file"
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f'error: optuna.storage: no {noun} at "{where}"\n'


def test_discover_with_an_unreachable_server_prints_only_the_error(
        invoke, tmp_path: Path) -> None:
    import json
    import socket

    pytest.importorskip("psycopg2", reason="the postgresql extra is not installed")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "stages.json").write_text(json.dumps({"optuna": {
        "storage": f"postgresql://u:secret@127.0.0.1:{port}/db", "studies": ["s"]},
        "state_db": "p.db"}))
    result = invoke("discover")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith(
        f"error: optuna.storage: cannot read 'postgresql://u:***@127.0.0.1:{port}/db': ")
    assert result.stderr.count("\n") == 1 and "secret" not in result.stderr


def test_discover_logs_a_failing_study_to_the_file_not_onto_stdout(
        invoke, tmp_path: Path, monkeypatch) -> None:
    """structlog, unconfigured, prints every event (a traceback too) on stdout: `discover
    --json` would not be JSON. The CLI routes them to logs/pipeline.jsonl."""
    import json

    import structlog

    url = storage_url("sqlite", tmp_path)
    complete(make_study(url, "s"), 1)
    (tmp_path / "stages.json").write_text(json.dumps(
        {"optuna": {"storage": url, "studies": ["s"]}, "state_db": "p.db"}))

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(Discovery, "poll_study", explode)
    structlog.reset_defaults()  # as in a fresh `pipeline discover` process
    try:
        result = invoke("discover", "--json")
    finally:
        structlog.reset_defaults()
    assert result.exit_code == 1
    assert json.loads(result.stdout)["errors"] == ["study 's': RuntimeError: boom"]
    assert result.stderr == "error: study 's': RuntimeError: boom\n"
    logged = [json.loads(line) for line in
              (tmp_path / "logs" / "pipeline.jsonl").read_text().splitlines()]
    assert logged[-1]["event"] == "study_poll_failed"
    assert "RuntimeError: boom" in logged[-1]["exception"]
