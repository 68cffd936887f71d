"""The engine under faults: a start that raises, a killed daemon, a clock step, a full disk,
leftover processes. Real SQLite, real Optuna, real processes; only clocks and probes injected."""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import sqlite3
import sys
import time
from pathlib import Path

import psutil

from pipeline_v2.daemon import Daemon
from pipeline_v2.models import StageStatus, TrialStatus
from pipeline_v2.stages.runner import StageRunner
from tests.engine_helpers import FIX, ROOT, spawn_daemon, store_for, wait_for, workspace
from tests.optuna_helpers import make_study

CMD = [sys.executable, str(ROOT / "tests" / "fixtures" / "command_stage.py")]
METRICS = "echo '{{\"sharpe\": 1}}'"  # a template: braces doubled


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def pid_in(folder: Path, name: str) -> int:
    return int((folder / name).read_text())


def two_trial_workspace(tmp_path: Path, stages: dict, attrs: list) -> Path:
    """Trials s:0 and s:1 with user_attrs n = attrs[0] / attrs[1]."""
    path = workspace(tmp_path, stages, trials=0)
    study = make_study(f"sqlite:///{tmp_path / 'optuna.db'}", "s")
    for n in attrs:
        trial = study.ask()
        trial.suggest_int("x", 0, 100)
        trial.set_user_attr("n", n)
        study.tell(trial, 1.0)
    return path


def test_a_start_that_raises_is_an_error_on_its_claim_and_others_proceed(tmp_path: Path) -> None:
    # "five".real raises AttributeError while the argv is rendered: after the claim committed.
    argv = [*CMD, "stdout", "{user_attrs[n].real}"]
    path = two_trial_workspace(tmp_path, {"c": {"command": argv, "max_attempts": 1}}, [5, "five"])
    summary = Daemon(path, mode="until_idle", timeout=30).run()
    assert summary.idle
    store = store_for(path)
    good, bad = store.find_trial("s:0"), store.find_trial("s:1")
    assert good.status == TrialStatus.PASSED
    assert store.stages_of(good.id)[0].results == {"sharpe": 5.0}
    stage = store.stages_of(bad.id)[0]
    assert (bad.status, stage.status, stage.attempts) == (TrialStatus.FAILED, StageStatus.FAILED, 1)
    assert stage.error_message == (
        "cannot start: AttributeError: 'str' object has no attribute 'real'")


def test_no_write_transaction_is_open_while_a_process_starts(tmp_path: Path, monkeypatch) -> None:
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok", "max_attempts": 1}}, trials=2)
    writes = []
    real_start = StageRunner.start_callable

    def start_and_write(self, stage_id, task, timeout, now):
        other = sqlite3.connect(tmp_path / "pipeline_v2.db", timeout=0.05,
                                isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # "database is locked" if the claim were still open
        other.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('probe', ?)",
                      [str(stage_id)])
        other.execute("COMMIT")
        other.close()
        writes.append(stage_id)
        return real_start(self, stage_id, task, timeout, now)

    monkeypatch.setattr(StageRunner, "start_callable", start_and_write)
    assert Daemon(path, mode="until_idle", timeout=30).run().idle
    assert len(writes) == 2
    store = store_for(path)
    assert {t.status for t in store.list_trials()} == {TrialStatus.PASSED}


class JumpingClock:
    """Wall time that steps by `jump` seconds once it has been read `after` times."""

    def __init__(self, jump: float, after: int = 2) -> None:
        self.jump, self.after, self.reads = jump, after, 0

    def __call__(self) -> float:
        self.reads += 1
        return time.time() + (self.jump if self.reads > self.after else 0.0)


def test_a_wall_clock_step_forward_kills_nothing_early(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:slow", "params": {"seconds": 0.3},
                                      "timeout_seconds": 20, "max_attempts": 1}})
    clock = JumpingClock(+3600)
    assert Daemon(path, mode="until_idle", timeout=30, clock=clock).run().idle
    assert clock.reads > clock.after  # the step happened while the attempt ran
    store = store_for(path)
    stage = store.stages_of(store.find_trial("s:0").id)[0]
    assert (stage.status, stage.error_message) == (StageStatus.PASSED, None)


def test_a_wall_clock_step_back_kills_nothing_late(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:hang", "timeout_seconds": 0.5,
                                      "max_attempts": 1}})
    clock = JumpingClock(-3600)
    summary = Daemon(path, mode="until_idle", timeout=20, clock=clock,
                     monotonic=time.monotonic).run()
    assert summary.idle and summary.reason == "idle"  # not ended by its own --timeout
    store = store_for(path)
    stage = store.stages_of(store.find_trial("s:0").id)[0]
    assert stage.error_message == "timed out after 0.5s (process group killed)"


def test_a_command_stage_leaves_no_process_behind(tmp_path: Path) -> None:
    script = ("sleep 123 & echo $! > {run_dir}/bg.pid; setsid sleep 124 & "
              "echo $! > {run_dir}/sid.pid; " + METRICS)
    path = workspace(tmp_path, {"c": {"command": ["sh", "-c", script], "max_attempts": 1}})
    assert Daemon(path, mode="until_idle", timeout=30).run().idle
    store = store_for(path)
    assert store.stages_of(store.find_trial("s:0").id)[0].status == StageStatus.PASSED
    run_dir = tmp_path / "logs" / "trials" / "s" / "0"
    wait_for(lambda: gone(pid_in(run_dir, "bg.pid")) and gone(pid_in(run_dir, "sid.pid")), 5)


def test_stage_processes_do_not_outlive_a_killed_daemon(tmp_path: Path) -> None:
    holding = tmp_path / "hold"
    holding.touch()
    # Trial x=1 stays in the command stage; x=2 passes it and holds in the callable stage.
    script = (f"echo $$ > {{run_dir}}/cmd.pid; if [ {{params[x]}} = 1 ] && [ -e {holding} ]; "
              "then setsid sleep 301 & echo $! > {run_dir}/sid.pid; exec sleep 300; fi; "
              + METRICS)
    path = workspace(tmp_path, {
        "c": {"command": ["sh", "-c", script], "max_attempts": 1},
        "b": {"run": f"{FIX}:hold", "params": {"hold": str(holding)}, "max_attempts": 1},
    }, trials=2)
    first, second = (tmp_path / "logs" / "trials" / "s" / n for n in ("0", "1"))
    daemon = spawn_daemon(path)
    store = store_for(path)
    try:
        wait_for(lambda: (first / "sid.pid").exists() and (second / "worker.pid").exists())
        c_stage = store.stages_of(store.find_trial("s:0").id)[0]
        b_stage = store.stages_of(store.find_trial("s:1").id)[1]
        wait_for(lambda: store.stage_process(c_stage.id) is not None)
        assert store.stage_process(c_stage.id)[0] == pid_in(first, "cmd.pid")
        assert store.stage_process(b_stage.id)[0] == pid_in(second, "worker.pid")
    finally:
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
    command, setsid = pid_in(first, "cmd.pid"), pid_in(first, "sid.pid")
    worker, grandchild = pid_in(second, "worker.pid"), pid_in(second, "grandchild.pid")
    wait_for(lambda: gone(worker) and gone(grandchild), 5)  # workers die with their daemon
    assert not gone(command) and not gone(setsid)  # a command waits for the next daemon
    holding.unlink()
    summary = Daemon(path, mode="once").run()
    assert summary.reason == "once"
    assert gone(command) and gone(setsid)
    for ref in ("s:0", "s:1"):
        events = store.events_of(store.find_trial(ref).id)
        assert "attempt 1 interrupted (1 in a row)" in [e["message"] for e in events], ref


def test_a_full_disk_starts_nothing_charges_nothing_and_recovers(
        tmp_path: Path, monkeypatch) -> None:
    path = workspace(tmp_path, {"c": {"command": [*CMD, "stdout", "2.5"], "max_attempts": 1}})
    full = {"on": True, "starts_while_full": 0, "health": []}
    real_start = StageRunner.start_command

    def start(self, *args, **kwargs):
        if full["on"]:
            full["starts_while_full"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_start(self, *args, **kwargs)

    def probe() -> None:
        full["health"].append(store_for(path).health()["disk"])
        if len(full["health"]) < 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        full["on"] = False

    monkeypatch.setattr(StageRunner, "start_command", start)
    monkeypatch.setattr("pipeline_v2.guard.DISK_RETRY_S", 0.05)
    daemon = Daemon(path, mode="until_idle", timeout=30)
    daemon.space_probe = probe
    assert daemon.run().idle
    assert full["starts_while_full"] == 1  # nothing new started while the disk was full
    assert len(full["health"]) == 3
    disk = full["health"][0]
    assert disk["status"] == "degraded"
    assert disk["message"] == ("disk full: OSError: [Errno 28] No space left on device; "
                               "nothing new starts until it frees")
    store = store_for(path)
    trial = store.find_trial("s:0")
    stage = store.stages_of(trial.id)[0]
    assert (trial.status, stage.status, stage.attempts) == (
        TrialStatus.PASSED, StageStatus.PASSED, 1)  # max_attempts 1: the full disk cost none
    messages = [e["message"] for e in store.events_of(trial.id)]
    assert ("attempt 1 requeued, not charged: cannot start: OSError: [Errno 28] No space left "
            "on device") in messages
    disk = store.health()["disk"]  # recovered, then the daemon stopped: no longer watched
    assert disk["status"] == "stopped"
    assert re.fullmatch(r"not watched: the daemon stopped \(last check: \d+% used\)",
                        disk["message"]), disk


class FullDisk:
    """A log stream on a full disk."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def seek(self, *args: int) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_a_log_file_on_a_full_disk_never_spews(tmp_path: Path, capsys) -> None:
    from pipeline_v2 import logs

    logs.configure(tmp_path / "logs", console=False)
    try:
        handler = logging.getLogger("pipeline_v2").handlers[0]
        handler.stream.close()
        handler.stream = FullDisk()
        for i in range(5):
            logs.get_logger("test").info("event", i=i)
            handler.stream = FullDisk()
        error = logs.take_write_error()
        assert isinstance(error, OSError) and error.errno == errno.ENOSPC
        assert logs.take_write_error() is None
        assert "Logging error" not in capsys.readouterr().err
    finally:
        logs.configure(None, console=False)
    # Closing the full-disk file flushed it once more; a new configuration starts clean, so
    # the next daemon of this process does not take that old failure for a full disk.
    assert logs.take_write_error() is None


def test_a_page_found_corrupt_mid_run_stops_the_daemon_in_one_line(
        tmp_path: Path, monkeypatch) -> None:
    from pipeline_v2.errors import StoreError
    from pipeline_v2.store import Store

    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok", "max_attempts": 1}})

    def malformed(self, now, limit):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(Store, "due_attempts", malformed)
    try:
        Daemon(path, mode="until_idle", timeout=30).run()
    except StoreError as exc:
        assert str(exc) == (f"{tmp_path / 'pipeline_v2.db'}: the state DB is corrupt "
                            "(database disk image is malformed)")
    else:
        raise AssertionError("the daemon went on writing to a corrupt state DB")


def test_a_stage_failing_on_a_full_disk_is_requeued_uncharged(tmp_path: Path,
                                                              monkeypatch) -> None:
    flag = tmp_path / "space"
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:no_space_unless_file",
                                      "params": {"flag": str(flag)}, "max_attempts": 1}})
    probes = []

    def probe() -> None:
        probes.append(store_for(path).health()["disk"]["status"])
        flag.touch()  # space is back

    monkeypatch.setattr("pipeline_v2.guard.DISK_RETRY_S", 0.05)
    daemon = Daemon(path, mode="until_idle", timeout=30)
    daemon.space_probe = probe
    assert daemon.run().idle
    assert probes and probes[0] == "degraded"
    store = store_for(path)
    trial = store.find_trial("s:0")
    stage = store.stages_of(trial.id)[0]
    assert (trial.status, stage.status, stage.attempts) == (
        TrialStatus.PASSED, StageStatus.PASSED, 1)
    messages = [e["message"] for e in store.events_of(trial.id)]
    assert ("attempt 1 requeued, not charged: OSError: [Errno 28] No space left on device"
            in messages)


def test_a_wall_clock_step_back_never_stalls_the_deployers_checks(tmp_path: Path) -> None:
    from pipeline_v2.config import load_config
    from pipeline_v2.deployer import Deployer
    from pipeline_v2.supervisor import Supervisor

    path = workspace(tmp_path, {"deploy": {"command": ["true"]}})
    store = store_for(path)
    mono = [100.0]
    deployer = Deployer(load_config(path), store, Supervisor(), monotonic=lambda: mono[0])
    checks = []
    deployer._check_running = checks.append  # which wall `now` each check saw
    wall = time.time()
    deployer.turn(wall, may_start=False)
    mono[0] += 2.0  # two seconds later, while the wall clock stepped back an hour
    deployer.turn(wall - 3600 + 2.0, may_start=False)
    assert checks == [wall, wall - 3600 + 2.0]
