"""`pipeline import-v1`: the V1 JSON file and the earlier V2 DB, twice, dry, and bad files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from pipeline_v2.store.legacy import dump
from tests.engine_helpers import run, store_for

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def ws(tmp_path: Path, invoke) -> Path:
    """A default workspace (backtest, cge_stress disabled, deploy) with a fresh state DB."""
    assert invoke("init").exit_code == 0
    return tmp_path / "stages.json"


def v2_db(tmp_path: Path) -> Path:
    path = tmp_path / "old_v2.db"
    conn = sqlite3.connect(path)
    conn.executescript((FIXTURES / "v2_state.sql").read_text())
    conn.commit()
    conn.close()
    return path


def statuses(ws: Path) -> dict[str, tuple[str, list[tuple[str, str, int]]]]:
    store = store_for(ws)
    out = {t.ref: (t.status.value, [(s.name, s.status.value, s.attempts)
                                    for s in store.stages_of(t.id)]) for t in store.list_trials()}
    store.close()
    return out


def test_v1_json_imports_with_verdicts_then_changes_nothing(ws: Path, invoke) -> None:
    db = ws.parent / "pipeline_v2.db"
    src = str(FIXTURES / "v1_state.json")
    result = invoke("import-v1", src, "--study", "btc")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "imported btc:0 (failed)", "imported btc:1 (rejected)", "imported btc:2 (paused)",
        "imported btc:3 (validated)", "imported btc:4 (paused)", "imported btc:6 (failed)",
        'skipped btc:5: unknown status "exploded" for cge_stress (expected one of active, '
        "complete, completed, crashed, deployed, disabled, done, error, errored, fail, failed, "
        "in_progress, not_started, pass, passed, pending, processing, queued, rejected, "
        "running, skipped, succeeded, success, trading, validated, waiting)",
        f"{src} (v1-json): 6 imported, 1 skipped"]
    got = statuses(ws)
    assert got["btc:0"] == ("failed", [("backtest", "failed", 1), ("cge_stress", "skipped", 0),
                                       ("deploy", "pending", 0)])
    assert got["btc:1"][1][1] == ("cge_stress", "rejected", 1)
    assert got["btc:2"] == ("paused", [("backtest", "passed", 2), ("cge_stress", "passed", 1),
                                       ("deploy", "pending", 0)])
    assert got["btc:3"] == ("validated", [("backtest", "passed", 1),
                                          ("cge_stress", "passed", 1), ("deploy", "passed", 1)])
    assert got["btc:4"] == ("paused", [("backtest", "pending", 0), ("cge_stress", "skipped", 0),
                                       ("deploy", "pending", 0)])
    assert got["btc:6"][1][2] == ("deploy", "failed", 4)
    show = json.loads(invoke("show", "btc:2", "--json").stdout)
    assert show["trial"]["reason"] == ("was paper trading in the old system, not adopted; "
                                       "`pipeline resume` deploys it here")
    assert show["trial"]["paused_from"] == "passed"
    assert json.loads(invoke("show", "btc:3", "--json").stdout)["stages"][0]["results"] == {
        "sharpe": 1.9}
    before = dump(db)
    again = invoke("import-v1", src, "--study", "btc")
    assert again.exit_code == 0
    assert again.stdout.splitlines()[:2] == ["skipped btc:0: already in the state DB",
                                              "skipped btc:1: already in the state DB"]
    assert again.stdout.splitlines()[-1] == f"{src} (v1-json): 0 imported, 7 skipped"
    assert dump(db) == before
    # Nothing runs on its own: a daemon turn starts no attempt and moves no trial.
    assert run(ws, mode="until_idle", timeout=10).attempts == 0
    assert statuses(ws) == got


def test_v2_db_imports_twice_and_dry_run_writes_nothing(ws: Path, invoke, tmp_path) -> None:
    db = ws.parent / "pipeline_v2.db"
    old = v2_db(tmp_path)
    old_before = dump(old)
    before = dump(db)
    dry = invoke("import-v1", str(old), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines() == [
        "would import eth_rl:10 (paused)", "would import eth_rl:11 (failed)",
        "would import eth_rl:12 (paused)", "would import eth_rl:13 (paused)",
        "note: health: 2 row(s) not imported (the daemon records its own)",
        f"{old} (v2-db): 4 would import, 0 skipped (dry run: nothing written)"]
    assert dump(db) == before
    assert invoke("import-v1", str(old)).exit_code == 0
    got = statuses(ws)
    assert got["eth_rl:11"] == ("failed", [("backtest", "failed", 3),
                                           ("cge_stress", "skipped", 0),
                                           ("deploy", "pending", 0)])
    assert got["eth_rl:12"][0] == "paused"
    show = json.loads(invoke("show", "eth_rl:10", "--json").stdout)
    assert show["trial"]["reason"] == ("was paper trading in the old system (pid 4242), not "
                                       "adopted; `pipeline resume` deploys it here")
    assert show["stages"][0]["results"] == {"sharpe": 2.4}
    assert show["trial"]["params"] == {"lr": 0.001}
    assert json.loads(invoke("show", "eth_rl:11", "--json").stdout)["stages"][0][
        "error_message"] == "ValueError: NaN in data"
    after_first = dump(db)
    second = invoke("import-v1", str(old), "--json")
    assert json.loads(second.stdout)["imported"] == []
    assert len(json.loads(second.stdout)["skipped"]) == 4
    assert dump(db) == after_first
    assert dump(old) == old_before  # the source is only read
    resumed = invoke("resume", "eth_rl:13")
    assert resumed.exit_code == 0, resumed.output
    assert statuses(ws)["eth_rl:13"][0] == "pending"


def test_bad_files_get_one_line(ws: Path, invoke, tmp_path: Path) -> None:
    def error_of(path: Path, *args: str) -> str:
        result = invoke("import-v1", str(path), "--study", "s", *args)
        assert result.exit_code == 1, result.output
        return result.stderr

    assert error_of(tmp_path / "nope.json") == f"error: {tmp_path / 'nope.json'}: no such file\n"
    bad = tmp_path / "bad.json"
    bad.write_text('{"trials": {,}}')
    assert error_of(bad) == (f"error: {bad}: neither a V1 JSON state file nor an earlier V2 "
                             "SQLite DB: not valid JSON (line 1: Expecting property name "
                             "enclosed in double quotes)\n")
    bad.write_text('{"studies": []}')
    assert error_of(bad) == (f'error: {bad}: expected a V1 state file with a "trials" object, '
                             "got keys ['studies']\n")
    bad.write_text("[1, 2]")  # was "got keys list"
    assert error_of(bad) == (f'error: {bad}: expected a V1 state file with a "trials" object, '
                             "got a JSON array [1, 2]\n")
    bad.write_text('{"trials": {"t7": {"trial_number": "seven"}}}')
    assert error_of(bad) == (f'error: {bad}: trials.t7.trial_number: expected an integer >= 0, '
                             'got "seven"\n')
    empty_db = tmp_path / "other.db"
    conn = sqlite3.connect(empty_db)
    conn.executescript("CREATE TABLE trials (id INTEGER); CREATE TABLE health (id INTEGER);")
    conn.close()
    assert error_of(empty_db) == (f"error: {empty_db}: not an earlier V2 state DB (missing "
                                  "tables: stages, deployments)\n")
    ours = ws.parent / "pipeline_v2.db"
    assert error_of(ours) == (f"error: {ours}: this is a pipeline_v2 state DB already "
                              "(nothing to import)\n")


def test_several_studies_need_study(tmp_path: Path, invoke) -> None:
    (tmp_path / "stages.json").write_text(json.dumps({"optuna": {"studies": ["a", "b"]}}))
    result = invoke("import-v1", str(FIXTURES / "v1_state.json"))
    assert result.exit_code == 2
    assert result.stderr == ("error: --study: name the study these trial numbers belong to "
                             "(the config watches a, b)\n")
