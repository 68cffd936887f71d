"""The stage engine end to end: real SQLite, real Optuna, real worker processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline_v2.config import load_config
from pipeline_v2.daemon import Daemon
from pipeline_v2.discovery import Discovery
from pipeline_v2.models import StageStatus, TrialStatus
from tests.engine_helpers import FIX, ROOT, run, spawn_daemon, store_for, wait_for, workspace

CMD = [sys.executable, str(ROOT / "tests" / "fixtures" / "command_stage.py")]


def stage(target: str, **kw) -> dict:
    return {"run": f"{FIX}:{target}", "max_attempts": 1, "timeout_seconds": 20, **kw}


def only_stage(store, ref="s:0"):
    trial = store.find_trial(ref)
    return trial, store.stages_of(trial.id)[0]


def test_trials_pass_through_stages_with_earlier_results(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": stage("ok"), "b": stage("ok")}, trials=3)
    summary = run(path)
    assert summary.idle and summary.attempts == 6
    store = store_for(path)
    for trial in store.list_trials():
        assert trial.status == TrialStatus.PASSED
        a, b = store.stages_of(trial.id)
        assert (a.status, b.status) == (StageStatus.PASSED, StageStatus.PASSED)
        assert a.results == {"sharpe": 1.5, "attempt": 1, "earlier": []}
        assert b.results["earlier"] == ["a"]
    log = tmp_path / "logs" / "trials" / "s" / "0" / "a.log"
    assert '"event": "ran"' in log.read_text()


class FastClock:
    """Wall time that runs 100 s ahead per read: retry delays pass without waiting for them."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        self.now += 100.0
        return self.now


def test_flaky_stage_passes_on_third_attempt_after_the_delays(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": stage("flaky", max_attempts=3)},
                     retry={"delays": [300, 1800]})
    assert Daemon(path, mode="until_idle", timeout=30, clock=FastClock()).run().idle
    store = store_for(path)
    trial, a = only_stage(store)
    assert (trial.status, a.status, a.attempts) == (TrialStatus.PASSED, StageStatus.PASSED, 3)
    events = store.events_of(trial.id)
    starts = [e["ts"] for e in events if e["kind"] == "stage.running"]
    failed = [e["ts"] for e in events if e["kind"] == "stage.pending" and e["old_status"]
              == "running"]
    assert len(starts) == 3 and len(failed) == 2
    assert starts[1] - failed[0] >= 300  # never retried before its delay
    assert starts[2] - failed[1] >= 1800
    errors = [e["message"] for e in events if e["kind"] == "stage.pending"]
    assert errors[0] == "attempt 1/3 failed, retry in 300s: RuntimeError: flaky failure 1"


def test_always_failing_stage_fails_after_max_attempts(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": stage("always_fail", max_attempts=3), "b": stage("ok")})
    run(path)
    store = store_for(path)
    trial, a = only_stage(store)
    assert (trial.status, a.status, a.attempts) == (TrialStatus.FAILED, StageStatus.FAILED, 3)
    assert a.error_message == "ValueError: the data is wrong"
    assert "raise ValueError" in a.error_traceback
    assert trial.reason == "a: ValueError: the data is wrong"
    assert store.stages_of(trial.id)[1].status == StageStatus.PENDING


def test_hanging_stage_is_killed_at_timeout_with_its_children(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": stage("hang", timeout_seconds=1)})
    run(path)
    store = store_for(path)
    trial, a = only_stage(store)
    assert a.status == StageStatus.FAILED
    assert a.error_message == "timed out after 1s (process group killed)"
    run_dir = tmp_path / "logs" / "trials" / "s" / "0"
    for name in ("grandchild.pid", "worker.pid"):
        pid = int((run_dir / name).read_text())
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize(("target", "message"), [
    ("exit_hard", "worker died (exit code 3)"),
    ("segfault", "worker died (killed by SIGSEGV)"),
    ("not_a_dict", "TypeError: a stage must return a dict of metrics, got list"),
])
def test_crashing_stage_is_an_error_and_the_daemon_lives(tmp_path: Path, target, message) -> None:
    path = workspace(tmp_path, {"a": stage(target, max_attempts=2)}, trials=2)
    assert run(path).idle
    store = store_for(path)
    for trial in store.list_trials():
        a = store.stages_of(trial.id)[0]
        assert (a.status, a.attempts, a.error_message) == (StageStatus.FAILED, 2, message)


def test_gate_rejection_is_final_and_not_retried(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": stage("metric_from_param", max_attempts=3,
                                           gates={"sharpe": ">= 0.2"})}, trials=2)
    run(path)
    store = store_for(path)
    low, high = store.find_trial("s:0"), store.find_trial("s:1")
    assert (low.status, high.status) == (TrialStatus.REJECTED, TrialStatus.PASSED)
    a = store.stages_of(low.id)[0]
    assert (a.status, a.attempts, a.reason) == (StageStatus.REJECTED, 1, "sharpe 0.1 < 0.2")
    assert low.reason == "sharpe 0.1 < 0.2"


def test_reject_exception_is_final(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": stage("reject", max_attempts=3)})
    run(path)
    trial, a = only_stage(store_for(path))
    assert (trial.status, a.status, a.attempts) == (TrialStatus.REJECTED, StageStatus.REJECTED, 1)
    assert a.reason == "strategy trades too rarely"


def test_gates_read_earlier_stages_and_name_missing_metrics(tmp_path: Path) -> None:
    gates = {"a.sharpe": ">= 2", "missing": "> 0"}
    path = workspace(tmp_path, {"a": stage("ok"), "b": stage("ok", gates=gates)})
    run(path)
    trial, _ = only_stage(store_for(path))
    assert trial.status == TrialStatus.REJECTED
    assert trial.reason == "a.sharpe 1.5 < 2.0; missing missing (gate missing > 0.0)"


def test_retry_reruns_a_failed_stage(tmp_path: Path, invoke) -> None:
    flag = tmp_path / "flag"
    path = workspace(tmp_path, {"a": stage("fail_unless_file", params={"flag": str(flag)})})
    run(path)
    assert store_for(path).find_trial("0").status == TrialStatus.FAILED
    flag.touch()
    result = invoke("retry", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout == "0: a back to pending\n"
    trial, a = only_stage(store_for(path))
    assert (trial.status, a.status, a.attempts) == (TrialStatus.PROCESSING, StageStatus.PENDING, 0)
    run(path)
    trial, a = only_stage(store_for(path))
    assert (trial.status, a.status, a.attempts) == (TrialStatus.PASSED, StageStatus.PASSED, 1)
    history = [e["message"] for e in store_for(path).events_of(trial.id)]
    assert "retry by hand (was a: RuntimeError: flag file missing)" in history


def test_control_commands_name_what_exists(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, {"a": stage("ok")}, trials=2)
    run(path, mode="once")
    result = invoke("retry", "7")
    assert result.exit_code == 2  # a usage error: README
    assert result.stderr == 'error: no trial "7"; known: s: 2 trials, 0..1\n'
    result = invoke("skip", "0", "nope")
    assert result.exit_code == 2
    assert result.stderr == 'error: trial s:0 has no stage "nope" (stages: a)\n'
    result = invoke("pause")
    assert result.exit_code == 2
    assert result.stderr == ("error: pipeline pause: missing TRIAL (trial number, or "
                             "study:number) or --all\n")


def test_pause_resume_and_cancel(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, {"a": stage("ok")}, trials=3)
    assert invoke("discover").exit_code == 0
    assert invoke("pause", "0").stdout == "paused: s:0\n"
    assert invoke("cancel", "1").stdout == "cancelled: s:1\n"
    run(path)
    store = store_for(path)
    statuses = [t.status for t in store.list_trials()]
    assert statuses == [TrialStatus.PAUSED, TrialStatus.CANCELLED, TrialStatus.PASSED]
    assert store.stages_of(store.find_trial("1").id)[0].status == StageStatus.CANCELLED
    assert invoke("resume", "0").stdout == "resumed: s:0\n"
    run(path)
    assert store_for(path).find_trial("0").status == TrialStatus.PASSED


def test_pause_all_starts_nothing(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, {"a": stage("ok")}, trials=2)
    assert invoke("pause", "--all").stdout.startswith("paused: the pipeline")
    summary = run(path, mode="once")
    assert summary.attempts == 0 and summary.turns == 1
    assert invoke("resume", "--all").exit_code == 0
    assert run(path).attempts == 2


def test_refusals_name_the_trial_and_what_is_allowed(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, {"a": stage("always_fail"), "b": stage("ok")})
    run(path)
    result = invoke("skip", "0", "b")
    assert result.exit_code == 2
    assert result.stderr == ("error: trial s:0 is failed at stage a; skip a itself, or retry "
                             "it first\n")
    invoke("cancel", "0")
    result = invoke("skip", "0", "b")
    assert result.stderr == ("error: trial s:0 is cancelled; skip needs a pending, processing, "
                             "passed, rejected, failed or paused trial\n")
    result = invoke("pause", "0")
    assert result.stderr == ("error: trial s:0 is cancelled; pause needs a pending, "
                             "processing, passed or deployed trial\n")
    assert invoke("resume", "0").stderr == ("error: trial s:0 is cancelled; resume needs a "
                                            "paused trial\n")
    assert invoke("stop", "0").stderr == ("error: trial s:0 has no running deployment (it is "
                                          "cancelled); stop needs a deployed trial\n")


def test_skip_moves_the_trial_on(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, {"a": stage("always_fail"), "b": stage("ok")})
    run(path)
    result = invoke("skip", "0", "a")
    assert result.exit_code == 0, result.output
    assert result.stdout == "0: a skipped; trial is processing\n"
    run(path)
    trial = store_for(path).find_trial("0")
    assert trial.status == TrialStatus.PASSED


def test_command_stages(tmp_path: Path) -> None:
    path = workspace(tmp_path, {
        "file": {"command": [*CMD, "result-file", "{params[x]}"], "max_attempts": 1},
        "stdout": {"command": [*CMD, "stdout", "2.5"], "max_attempts": 1},
    })
    run(path)
    store = store_for(path)
    trial = store.find_trial("0")
    first, second = store.stages_of(trial.id)
    assert first.results == {"sharpe": 1.0, "trial": "s:0"}
    assert second.results == {"sharpe": 2.5}


@pytest.mark.parametrize(("mode", "message"), [
    ("fail", "exit code 4: disk quota exceeded"),
    ("no-metrics", "exited 0 but the last line of stdout is not JSON: 'done, but forgot the "
                   "metrics?' (write a JSON object to $PIPELINE_RESULT_FILE or as the last stdout "
                   "line)"),
    ("silent", "exited 0 but wrote no metrics (write JSON to $PIPELINE_RESULT_FILE or as the "
               "last stdout line)"),
])
def test_command_stage_errors(tmp_path: Path, mode: str, message: str) -> None:
    path = workspace(tmp_path, {"c": {"command": [*CMD, mode], "max_attempts": 1}})
    run(path)
    _, c = only_stage(store_for(path))
    assert (c.status, c.error_message) == (StageStatus.FAILED, message)


def test_hanging_command_is_killed_at_timeout(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"c": {"command": [*CMD, "hang"], "max_attempts": 1,
                                      "timeout_seconds": 0.5}})
    run(path)
    _, c = only_stage(store_for(path))
    assert c.error_message == "timed out after 0.5s (process group killed)"
    leftovers = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "command_stage.py" in " ".join(proc.cmdline()):
                leftovers.append(proc)
        except psutil.NoSuchProcess:
            pass  # a process that ended while we looked is not a leftover
    assert leftovers == []


def test_once_runs_one_turn(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": stage("ok"), "b": stage("ok")}, trials=1)
    summary = run(path, mode="once")
    assert summary.reason == "once" and summary.attempts == 1
    _, a = only_stage(store_for(path))
    assert a.status == StageStatus.PASSED


def test_interrupted_attempt_returns_to_pending_and_three_count(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": stage("ok", max_attempts=1)})
    store = store_for(path)
    Discovery(load_config(path), store).poll()
    _, a = only_stage(store)
    daemon = Daemon(path, mode="once")
    daemon.store = store
    for interrupted in (1, 2):
        store.claim_attempt(a.id, time.time())  # as if a daemon died mid-attempt
        daemon.reconcile(time.time())
        a = store.get_stage(a.id)
        assert (a.status, a.attempts, a.interruptions) == (StageStatus.PENDING, 0, interrupted)
    store.claim_attempt(a.id, time.time())
    daemon.reconcile(time.time())
    a = store.get_stage(a.id)
    assert a.status == StageStatus.FAILED
    assert a.error_message == "interrupted 3 times in a row"


def test_a_second_daemon_exits_naming_the_holder(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, {"a": stage("slow", params={"seconds": 30})})
    first = spawn_daemon(path)
    try:
        lock = Path(str(tmp_path / "pipeline_v2.db") + ".lock")
        deadline = time.monotonic() + 20
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        result = invoke("run-daemon", "--once")
        assert result.exit_code == 1
        assert result.stderr == (f"error: {lock}: another daemon (pid {first.pid}) is running "
                                 "on this state DB; stop it first\n")
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)


def test_sigterm_during_a_run_exits_cleanly(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": stage("slow", params={"seconds": 0.3})}, trials=20)
    proc = spawn_daemon(path)
    store = store_for(path)
    wait_for(lambda: store.stage_counts().get("a", {}).get("passed", 0) >= 2, 30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0  # a safety net for a hung test, not a measured time
    counts = store.stage_counts()["a"]
    assert counts.get("running", 0) == 0
    assert counts["passed"] >= 2
    assert store.health()["daemon"]["status"] == "stopped"


def test_sigkill_mid_run_then_restart_finishes_everything(tmp_path: Path) -> None:
    counter = tmp_path / "runs.txt"
    params = {"counter": str(counter), "seconds": 0.05}
    path = workspace(tmp_path, {"a": stage("count_runs", params=params),
                                "b": stage("count_runs", params=params)}, trials=30)
    proc = spawn_daemon(path)
    store = store_for(path)
    wait_for(lambda: store.stage_counts().get("a", {}).get("passed", 0) >= 5, 30)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert store.stage_counts()["a"].get("passed", 0) < 30
    summary = run(path)
    assert summary.idle
    assert {t.status for t in store.list_trials()} == {TrialStatus.PASSED}
    passed = store.db.execute(
        "SELECT trial_id, stage, COUNT(*) FROM events WHERE kind = 'stage.passed' GROUP BY 1, 2"
    ).fetchall()
    assert len(passed) == 60
    assert {row[2] for row in passed} == {1}
    assert store.integrity_check() == "ok"
    runs = counter.read_text().splitlines()
    interrupted = store.db.execute(
        "SELECT COUNT(*) FROM events WHERE kind = 'stage.pending' AND message LIKE '%interrupted%'"
    ).fetchone()[0]
    assert len(set(runs)) == 60  # every stage of every trial ran
    assert len(runs) - 60 <= interrupted  # and ran again only when a kill cut it short


def test_sighup_reloads_the_config_and_keeps_a_bad_one_out(tmp_path: Path) -> None:
    import json

    path = workspace(tmp_path, {"a": stage("slow", params={"seconds": 0.2})}, trials=3)
    proc = spawn_daemon(path)
    log = tmp_path / "logs" / "pipeline.jsonl"
    try:
        wait_for(lambda: log.exists() and "daemon_started" in log.read_text())
        raw = json.loads(path.read_text())
        raw["daemon"]["workers"] = 1
        path.write_text(json.dumps(raw))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config_reloaded" in log.read_text())
        path.write_text('{"daemon": {"workers": 0}}')
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config_reload_failed" in log.read_text())
        assert proc.poll() is None  # a bad config on reload never takes the daemon down
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    failed = [json.loads(line) for line in log.read_text().splitlines()
              if "config_reload_failed" in line]
    assert failed[0]["error"].endswith(
        "stages.json: daemon.workers: expected an integer >= 1, got 0")


def test_cancel_kills_a_running_attempt_within_a_second(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, {"a": stage("hang", timeout_seconds=60)})
    proc = spawn_daemon(path)
    run_dir = tmp_path / "logs" / "trials" / "s" / "0"
    try:
        wait_for(lambda: (run_dir / "worker.pid").exists())
        worker = int((run_dir / "worker.pid").read_text())
        assert invoke("cancel", "0").exit_code == 0
        wait_for(lambda: not psutil.pid_exists(worker)
                   or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE)
        _, a = only_stage(store_for(path))
        assert a.status == StageStatus.CANCELLED
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_errors_that_cannot_heal_are_final(tmp_path: Path) -> None:
    data = tmp_path / "no_low.csv"
    data.write_text("date,open,high,close\n2021-01-01,1,2,1\n2021-01-02,1,2,1\n")
    path = workspace(tmp_path, {"backtest": {"run": "pipeline_v2.stages.builtin:backtest",
                                             "max_attempts": 3,
                                             "params": {"data": str(data),
                                                        "strategy": "sma_cross"}}})
    assert run(path).idle
    trial, stage_row = only_stage(store_for(path))
    assert (trial.status, stage_row.status) == (TrialStatus.FAILED, StageStatus.FAILED)
    assert stage_row.attempts == 1  # not retried: a missing column does not heal
    assert stage_row.error_message.startswith(f"{data}: missing column(s) low")
