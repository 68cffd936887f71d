"""The CLI under hostile data and bad state DBs: one line and an exit code, never a traceback."""

from __future__ import annotations

import gc
import hashlib
import json
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from pipeline_v2.config import load_config
from pipeline_v2.discovery import Discovery
from pipeline_v2.store import open_store
from tests.optuna_helpers import make_study

MARKUP = "[/]x[bold]"


def markup_workspace(tmp_path: Path) -> Path:
    """A study whose name, param value and failure reason are rich markup."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = make_study(url, MARKUP)
    study.enqueue_trial({"side": MARKUP, "x": 1})
    trial = study.ask()
    trial.suggest_categorical("side", [MARKUP, "[red]"])
    trial.suggest_int("x", 0, 3)
    study.tell(trial, 1.0)
    path = tmp_path / "stages.json"
    path.write_text(json.dumps({
        "optuna": {"storage": url, "studies": [MARKUP]},
        "stages": {"a": {"run": "tests.fixtures.stages:ok"}},
    }))
    store = open_store(load_config(path))
    Discovery(load_config(path), store).poll()
    trial_row = store.list_trials()[0]
    with store.transaction() as conn:
        conn.execute("UPDATE trials SET reason = ? WHERE id = ?", [MARKUP, trial_row.id])
        conn.execute("INSERT INTO deployments (trial_id, status, run_dir, updated_at)"
                     " VALUES (?, 'stopped', ?, 0)", [trial_row.id, MARKUP])
    store.close()
    return path


def test_user_values_are_never_markup(invoke, tmp_path: Path) -> None:
    markup_workspace(tmp_path)
    for args in (["status"], ["trials"], ["report"], ["show", f"{MARKUP}:0"]):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output, result.exception)
        assert MARKUP in result.stdout, args
    assert f"side={MARKUP}" in invoke("trials").stdout


optuna.logging.set_verbosity(optuna.logging.WARNING)


def stages_workspace(tmp_path: Path, stages: dict, trials: int = 2) -> Path:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = make_study(url, "s")
    for _ in range(trials):
        trial = study.ask()
        trial.suggest_int("x", 0, 3)
        study.tell(trial, 1.0)
    path = tmp_path / "stages.json"
    path.write_text(json.dumps({"optuna": {"storage": url, "studies": ["s"]},
                                "stages": stages}))
    return path


def test_pause_all_and_resume_all_touch_only_the_pipeline(invoke, tmp_path: Path) -> None:
    stages_workspace(tmp_path, {"a": {"run": "tests.fixtures.stages:ok"}})
    assert invoke("discover").exit_code == 0
    assert invoke("pause", "0").stdout == "paused: s:0\n"
    result = invoke("pause", "--all")
    assert result.stdout == "paused: the pipeline (nothing new starts; trials keep their status)\n"
    statuses = [t["status"] for t in json.loads(invoke("trials", "--json").stdout)]
    assert statuses == ["paused", "pending"]
    assert json.loads(invoke("status", "--json").stdout)["paused_all"] is True
    result = invoke("resume", "--all")
    assert result.stdout == "resumed: the pipeline; still paused one by one: s:0\n"
    statuses = [t["status"] for t in json.loads(invoke("trials", "--json").stdout)]
    assert statuses == ["paused", "pending"]
    assert json.loads(invoke("status", "--json").stdout)["paused_all"] is False
    assert invoke("resume", "0").stdout == "resumed: s:0\n"
    assert invoke("resume", "--all").stdout == "resumed: the pipeline\n"


def test_deploy_a_trial_discovered_before_the_deploy_stage(invoke, tmp_path: Path) -> None:
    path = stages_workspace(tmp_path, {"a": {"run": "tests.fixtures.stages:ok"}})
    assert invoke("discover").exit_code == 0
    raw = json.loads(path.read_text())
    raw["stages"]["deploy"] = {"command": ["true"]}
    path.write_text(json.dumps(raw))
    store = open_store(load_config(path))
    with store.transaction() as conn:  # as if it had passed stage a
        conn.execute("UPDATE stages SET status = 'passed'")
        conn.execute("UPDATE trials SET status = 'passed'")
    result = invoke("deploy", "0")
    assert result.exit_code == 2, result.output
    assert result.stderr == ('error: trial s:0 has no "deploy" stage (it was discovered before the '
                             "deploy stage was configured); only trials discovered since can be "
                             "deployed\n")


def test_an_unexpected_error_is_one_line_and_the_traceback_is_logged(
        invoke, tmp_path: Path, monkeypatch) -> None:
    from pipeline_v2 import control

    stages_workspace(tmp_path, {"a": {"run": "tests.fixtures.stages:ok"}})
    assert invoke("discover").exit_code == 0

    def explode(store, ref):
        raise RuntimeError("a bug")

    monkeypatch.setattr(control, "show_trial", explode)
    result = invoke("show", "0")
    assert result.exit_code == 1
    log = tmp_path / "logs" / "pipeline.jsonl"
    assert result.stderr == (f"error: unexpected RuntimeError: a bug (see {log} or rerun with "
                             "--debug)\n")
    assert "Traceback" not in result.stderr
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert logged[-1]["event"] == "unexpected_error"
    assert "RuntimeError: a bug" in logged[-1]["exception"]
    result = invoke("--debug", "show", "0")
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.endswith("error: unexpected RuntimeError: a bug\n")


@pytest.mark.parametrize("args", [["status", "--json"], ["trials", "--jsonl"],
                                  ["show", "0", "--json"], ["trials"]])
def test_a_reader_that_closed_the_pipe_is_no_error(invoke, tmp_path: Path, args) -> None:
    """`pipeline trials --jsonl | head -1`: the reader went away, which is not a bug to report
    (click exits 1 quietly, as for a rich table)."""
    stages_workspace(tmp_path, {"a": {"run": "tests.fixtures.stages:ok"}})
    assert invoke("discover").exit_code == 0
    with subprocess.Popen([sys.executable, "-m", "pipeline_v2", *args], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        process.stdout.close()  # before the interpreter has even started: every write fails
        stderr = process.stderr.read().decode()
    assert process.returncode == 1
    assert stderr == ""
    log = tmp_path / "logs" / "pipeline.jsonl"
    assert "BrokenPipeError" not in (log.read_text() if log.exists() else "")


def corrupt_workspace(tmp_path: Path, invoke) -> Path:
    """A real state DB with 60 trials whose middle pages were overwritten with garbage."""
    stages_workspace(tmp_path, {"a": {"run": "tests.fixtures.stages:ok"}}, trials=60)
    assert invoke("discover").exit_code == 0
    db = tmp_path / "pipeline_v2.db"
    gc.collect()  # the CLI's connections
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    data = bytearray(db.read_bytes())
    pages = len(data) // 4096
    assert pages > 6
    rng = random.Random(9)
    for page in range(3, pages - 1):
        data[page * 4096:(page + 1) * 4096] = rng.randbytes(4096)
    db.write_bytes(bytes(data))
    return db


def test_a_corrupt_state_db_is_refused_by_every_command_in_one_line(
        invoke, tmp_path: Path) -> None:
    db = corrupt_workspace(tmp_path, invoke)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    for args in (["status"], ["trials"], ["init"], ["discover"], ["run-daemon", "--once"],
                 ["stop", "--all"], ["pause", "--all"], ["show", "0"], ["report"]):
        result = invoke(*args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith(
            f"error: {db}: the state DB is corrupt (PRAGMA quick_check: "), (args, result.stderr)
        assert result.stderr.count("\n") == 1, args
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before, args


def test_a_reader_meeting_a_corrupt_page_says_so_in_one_line(invoke, tmp_path: Path) -> None:
    """quick_check's verdict for several bad pages spans lines; the error stays one line."""
    stages_workspace(tmp_path, {"a": {"run": "tests.fixtures.stages:ok"}}, trials=3)
    assert invoke("discover").exit_code == 0
    db = tmp_path / "pipeline_v2.db"
    gc.collect()  # the CLI's connections
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    roots = [r[0] for r in conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND rootpage > 1")]
    conn.close()
    data = bytearray(db.read_bytes())
    for root in roots:  # every table's root page: whatever a reader reads is corrupt
        data[(root - 1) * 4096:root * 4096] = bytes([0xA5]) * 4096
    db.write_bytes(bytes(data))
    for args in (["status", "--json"], ["trials"]):
        result = invoke(*args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith(
            f"error: {db}: the state DB is corrupt (PRAGMA quick_check: *** in database main "
            "*** Page "), (args, result.stderr)
        assert result.stderr.count("\n") == 1, (args, result.stderr)


def test_state_db_naming_a_directory_is_one_line(invoke, tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "stages.json").write_text(json.dumps({"state_db": "state"}))
    for args in (["status"], ["init"]):
        result = invoke(*args)
        assert result.exit_code == 1
        assert result.stderr == (f"error: {tmp_path / 'state'}: state_db names a directory; "
                                 "expected an SQLite file (e.g. pipeline_v2.db)\n")


def journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


def test_state_db_naming_the_optuna_storage_is_refused_untouched(
        invoke, tmp_path: Path) -> None:
    path = stages_workspace(tmp_path, {"a": {"run": "tests.fixtures.stages:ok"}})
    optuna_db = tmp_path / "optuna.db"
    assert journal_mode(optuna_db) == "delete"
    raw = json.loads(path.read_text())
    raw["state_db"] = "optuna.db"
    path.write_text(json.dumps(raw))
    result = invoke("status")
    assert result.exit_code == 2
    assert result.stderr == (f"error: stages.json: state_db: {str(optuna_db)!r} is the Optuna "
                             "storage (optuna.storage); the state DB needs a file of its own\n")
    # The same file under another name: known by its contents.
    copy = tmp_path / "copy.db"
    copy.write_bytes(optuna_db.read_bytes())
    raw["state_db"] = "copy.db"
    path.write_text(json.dumps(raw))
    for args in (["status"], ["init"], ["run-daemon", "--once"]):
        result = invoke(*args)
        assert result.exit_code == 1, args
        assert result.stderr == (
            f"error: {copy}: this is an Optuna storage (it has Optuna's studies and "
            "alembic_version tables), not a state DB; refusing to touch it (point state_db at "
            "a file of its own, e.g. pipeline_v2.db)\n")
    assert journal_mode(optuna_db) == "delete" and journal_mode(copy) == "delete"


def test_read_only_commands_never_create_a_mistyped_state_db(invoke, tmp_path: Path) -> None:
    from tests.engine_helpers import workspace

    missing = tmp_path / "nonexistent" / "dir" / "x.db"
    path = workspace(tmp_path, {"a": {"run": "tests.fixtures.stages:ok"}}, state_db=str(missing))
    expected = (f'error: state_db: no state DB at "{missing}" (run `pipeline init` or start the '
                "daemon)\n")
    for args in (["status"], ["trials"], ["show", "0"], ["report"], ["logs", "0"], ["health"]):
        result = invoke(*args, "--config", str(path))
        assert (result.exit_code, result.stderr) == (2, expected), args
    assert not (tmp_path / "nonexistent").exists()
    # A missing file in an existing folder: a reader may come before the daemon (status while
    # it starts, the chaos suite's readers), so it answers with an empty pipeline.
    path = workspace(tmp_path, {"a": {"run": "tests.fixtures.stages:ok"}}, state_db="typo.db")
    assert invoke("status", "--config", str(path)).exit_code == 0
    # Writing commands still create it.
    assert invoke("init", "--config", str(path)).exit_code == 0
    assert invoke("status", "--config", str(path)).exit_code == 0
