"""Deployments under faults (issue 9): never two traders, one change one transaction, nothing
left half-way at start-up, no escaped grandchild, nothing signalled that is not ours."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline_v2.config import load_config
from pipeline_v2.daemon import Daemon
from pipeline_v2.discovery import Discovery
from pipeline_v2.errors import TransitionError
from pipeline_v2.models import Deployment, DeploymentStatus, StageStatus, TrialStatus
from pipeline_v2.store import Store, open_store
from pipeline_v2.supervisor import SHIM_BUSY, Supervisor, boot_id, find_shim, identify
from tests.engine_helpers import run, spawn_daemon, store_for, wait_for, workspace
from tests.test_deploy import TRADER, pids_in, stages, traders

D = DeploymentStatus


@pytest.fixture(autouse=True)
def nothing_outlives_its_test(tmp_path: Path):
    yield
    for proc in traders(tmp_path, shims=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_all(path: Path) -> list[str]:
    """`pipeline stop --all` with no daemon running (in this process: it is the same code)."""
    from pipeline_v2 import control

    store = store_for(path)
    try:
        return control.stop(store, load_config(path), None)
    finally:
        store.close()


def passed_trial(tmp_path: Path, mode: str, trials: int = 1,
                 **overrides) -> tuple[Path, Store, int]:
    """Discovered trials whose first stage passed, their deploy stage still pending."""
    path = workspace(tmp_path, stages(mode, **overrides), trials=trials)
    config = load_config(path)
    store = open_store(config)
    Discovery(config, store).poll(time.time())
    store.conn.execute("UPDATE trials SET status = 'passed'")
    store.conn.execute("UPDATE stages SET status = 'passed', results = '{\"sharpe\": 1.0}'"
                       " WHERE stage_name = 'a'")
    return path, store, store.find_trial("0").id


def first_deployment(tmp_path: Path, mode: str,
                     **overrides) -> tuple[Path, Store, Deployment]:
    """A daemon process that deploys the one (passed) trial and is SIGKILLed: its trader runs
    on, as a killed daemon leaves it."""
    path, store, _ = passed_trial(tmp_path, mode, **overrides)
    proc = spawn_daemon(path)
    try:
        wait_for(lambda: any((Path(d.run_dir) / "heartbeat").exists() and d.pid
                             for d in store.deployments("starting", "running")), 60)
    finally:
        proc.kill()
        proc.wait()
    [dep] = store.deployments("starting", "running")
    return path, store, dep


# -- 1. never two traders -------------------------------------------------------------------------

def test_a_second_shim_for_a_run_dir_starts_nothing(tmp_path: Path) -> None:
    sup = Supervisor()
    first = sup.spawn(1, [sys.executable, TRADER, "good", str(tmp_path)], tmp_path)
    wait_for(lambda: (tmp_path / "heartbeat").exists(), 10)
    marker = tmp_path / "second_ran"
    sup.spawn(2, [sys.executable, "-c", f"open({str(marker)!r}, 'w')"], tmp_path)
    exits: list[tuple[int, int | None]] = []
    wait_for(lambda: bool(exits.extend(sup.exited()) or exits), 10)
    assert exits == [(2, SHIM_BUSY)]
    assert not marker.exists()
    log = (tmp_path / "paper.log").read_text()
    assert (f"pipeline shim: {tmp_path / 'shim.lock'} is held by pid {first.pid}: a trader "
            "already runs in this run dir; not starting another\n") in log
    assert find_shim(tmp_path) == first  # a daemon that lost track finds it by the lock
    assert is_running(first.pid)


@pytest.mark.parametrize("recorded", ["no pid", "a dead pid"])
def test_a_daemon_killed_between_commit_and_spawn_never_gets_a_second_trader(
        tmp_path: Path, recorded: str) -> None:
    path, store, dep = first_deployment(tmp_path, "good")
    shim = dep.pid
    # The window: the row says `starting` (committed), the trader runs, the daemon died
    # before recording who it is (or the row still names the previous, dead process).
    dead = subprocess.Popen(["true"])
    dead_identity = identify(dead.pid)
    dead.wait()
    pid, create_time, boot = ((None, None, None) if recorded == "no pid" else
                              (dead.pid, dead_identity.create_time, boot_id()))
    store.conn.execute("UPDATE deployments SET status = 'starting', pid = ?, create_time = ?,"
                       " boot_id = ? WHERE id = ?", [pid, create_time, boot, dep.id])
    run(path, mode="forever", timeout=1.5)  # a new daemon
    assert len(pids_in(Path(dep.run_dir))) == 1  # one trader ever started
    assert len(traders(tmp_path)) == 1
    now = store.get_deployment(dep.id)
    assert now.status in (D.STARTING, D.RUNNING) and now.pid == shim  # adopted by the lock
    stop_all(path)
    wait_for(lambda: not traders(tmp_path, shims=True), 10)


def test_begin_deployment_twice_makes_one_row(tmp_path: Path) -> None:
    _, store, trial_id = passed_trial(tmp_path, "good")
    store.begin_deployment(trial_id, "deploy", str(tmp_path / "run"), 1.0, "first")
    with pytest.raises(TransitionError, match="already has a live deployment"):
        store.begin_deployment(trial_id, "deploy", str(tmp_path / "run"), 2.0, "second")
    assert len(store.deployments()) == 1
    with pytest.raises(sqlite3.IntegrityError):  # the partial UNIQUE index, whoever writes
        store.conn.execute("INSERT INTO deployments (trial_id, status, run_dir, updated_at)"
                           " VALUES (?, 'running', 'x', 0)", [trial_id])


def test_a_db_with_two_live_rows_for_a_trial_migrates_to_one(tmp_path: Path) -> None:
    _, store, trial_id = passed_trial(tmp_path, "good")
    # As an older version could leave it: no index, two live rows for one trial.
    store.conn.execute("DROP INDEX deployments_one_live")
    store.conn.execute("DELETE FROM _sqlite_migrations WHERE name ="
                       " 'm005_one_live_deployment_per_trial'")
    for status in ("running", "backoff"):
        store.conn.execute("INSERT INTO deployments (trial_id, status, run_dir, updated_at)"
                           " VALUES (?, ?, 'x', 0)", [trial_id, status])
    store.close()
    store = Store(store.path)
    assert [d.status for d in store.deployments()] == [D.STOPPED, D.BACKOFF]


# -- 8. no escaped grandchild --------------------------------------------------------------------

def test_a_setsid_grandchild_does_not_survive_stop(tmp_path: Path, invoke) -> None:
    path, store, dep = first_deployment(tmp_path, "escape")
    escaped = Path(dep.run_dir) / "escaped"
    wait_for(escaped.exists, 10)
    sleeper = int(escaped.read_text())
    assert is_running(sleeper)
    assert os.getsid(sleeper) != os.getsid(dep.pid)  # out of the trader's session and group
    result = invoke("stop", "0")
    assert result.exit_code == 0, result.output
    wait_for(lambda: not is_running(sleeper), 5)
    wait_for(lambda: not traders(tmp_path, shims=True), 5)


def test_stop_beside_a_running_daemon_ends_the_whole_tree(tmp_path: Path) -> None:
    from pipeline_v2 import control

    path, store, _ = passed_trial(tmp_path, "escape")
    proc = spawn_daemon(path)
    try:
        wait_for(lambda: any((Path(d.run_dir) / "escaped").exists()
                             for d in store.deployments("running")), 60)
        [dep] = store.deployments("running")
        sleeper = int((Path(dep.run_dir) / "escaped").read_text())
        # The CLI records the stop and signals; the live daemon sees the trader out.
        assert control.stop(store, load_config(path), "0") == ["s:0"]
        wait_for(lambda: store.get_deployment(dep.id).status == D.STOPPED, 20)
        assert not is_running(sleeper) and proc.poll() is None
        assert store.find_trial("0").status == TrialStatus.RETIRED
    finally:
        proc.kill()
        proc.wait()


def test_the_hard_kill_reaches_a_setsid_grandchild_and_the_shim_still_reports(
        tmp_path: Path) -> None:
    from pipeline_v2.supervisor import kill_trader

    sup = Supervisor()
    shim = sup.spawn(1, [sys.executable, TRADER, "escape", str(tmp_path)], tmp_path)
    wait_for((tmp_path / "escaped").exists, 10)
    sleeper = int((tmp_path / "escaped").read_text())
    assert kill_trader(shim, tmp_path)  # what the daemon does when the stop grace is over
    exits: list[tuple[int, int | None]] = []
    wait_for(lambda: bool(exits.extend(sup.exited()) or exits), 10)
    assert exits == [(1, -9)]  # the shim survived to reap its tree and record the exit
    assert not is_running(sleeper)


# -- forged rows ---------------------------------------------------------------------------------

def test_forged_deployment_rows_are_never_signalled(tmp_path: Path) -> None:
    path = workspace(tmp_path, stages("finish"), trials=2)
    assert run(path).idle
    store = store_for(path)
    # Live processes that are not ours, named with their exact (pid, create time, boot id):
    # what a forged row, or a row whose pid was reused, looks like.
    victims = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(2)]
    try:
        forged = [identify(v.pid) for v in victims]

        def forge() -> None:
            for trial, who in zip(store.list_trials(), forged, strict=True):
                run_dir = store.latest_deployment(trial.id).run_dir
                store.conn.execute(
                    "INSERT INTO deployments (trial_id, status, run_dir, pid, create_time,"
                    " boot_id, spawned_at, started_at, updated_at)"
                    " VALUES (?, 'running', ?, ?, ?, ?, 0, 0, 0)",
                    [trial.id, run_dir, who.pid, who.create_time, who.boot_id])

        forge()
        stop_all(path)
        assert all(v.poll() is None for v in victims)
        assert not store.deployments("starting", "running", "stopping")
        forge()
        run(path, mode="once")  # start-up reconciliation meets them
        assert all(v.poll() is None and is_running(v.pid) for v in victims)
        assert not store.deployments("starting", "running", "stopping")
    finally:
        for victim in victims:
            victim.kill()
            victim.wait()


# -- 2. one change, one transaction; reconciliation of every unsettled state ---------------------

@pytest.mark.parametrize("state", ["starting", "running", "stopping", "backoff", "crashed",
                                   "exited"])
def test_start_up_settles_every_unsettled_deployment(tmp_path: Path, state: str) -> None:
    path, store, trial_id = passed_trial(tmp_path, "finish")
    run_dir = tmp_path / "logs" / "deployments" / "s" / "0"
    dep = store.begin_deployment(trial_id, "deploy", str(run_dir), 1.0, "test")
    dead = subprocess.Popen(["true"])
    gone = identify(dead.pid)
    dead.wait()
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text('{"sharpe": 1.0, "bars": 200, "trades": 10}')
    store.conn.execute(
        "UPDATE deployments SET status = ?, pid = ?, create_time = ?, boot_id = ?,"
        " reason = ?, started_at = 1, spawned_at = 1 WHERE id = ?",
        [state, gone.pid, gone.create_time, gone.boot_id,
         "retire: by test" if state == "stopping" else None, dep.id])
    assert run(path).idle
    trial = store.get_trial(trial_id)
    deploy = store.stages_of(trial_id)[1]
    expected = TrialStatus.RETIRED if state == "stopping" else TrialStatus.VALIDATED
    assert (trial.status, deploy.status) == (
        expected, StageStatus.CANCELLED if state == "stopping" else StageStatus.PASSED)
    assert not store.deployments("starting", "running", "stopping", "backoff", "crashed")


def test_a_failure_mid_change_commits_nothing_partial(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = workspace(tmp_path, stages("crash", restart={"backoff": [0.05, 0.1], "max_crashes": 1,
                                                       "window_seconds": 30}))
    real = Store.finish_deployment
    seen: list[tuple[str, str]] = []

    def fails_once(self: Store, trial_id: int, *args, **kwargs) -> None:
        real(self, trial_id, *args, **kwargs)  # its writes are made, then the step fails
        if not seen:
            dep = self.latest_deployment(trial_id)
            seen.append((dep.status.value, self.get_trial(trial_id).status.value))
            raise RuntimeError("disk on fire")

    monkeypatch.setattr(Store, "finish_deployment", fails_once)
    assert run(path).idle  # the daemon outlives the failure
    store = store_for(path)
    trial = store.find_trial("0")
    dep = store.latest_deployment(trial.id)
    assert seen == [("fatal", "failed")]
    assert (dep.status, trial.status) == (D.FATAL, TrialStatus.FAILED)
    kinds = [e["kind"] for e in store.events_of(trial.id)]
    # the failed change left no trace; the retry recorded it once
    assert kinds.count("deployment.crashed") == 1 and kinds.count("deployment.fatal") == 1
    assert kinds.count("deployment.crash_loop") == 1 and kinds.count("deployment.error") == 1


def test_a_failed_stop_by_hand_commits_nothing(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline_v2 import control

    path, store, dep = first_deployment(tmp_path, "good")

    def fails(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Store, "set_deployment_status", fails)  # after the trial's retirement
    with pytest.raises(RuntimeError):
        control.stop(store, load_config(path), "0", wait=False)
    monkeypatch.undo()
    assert store.find_trial("0").status == TrialStatus.DEPLOYED  # not retired with a live trader
    assert store.get_deployment(dep.id).status in (D.STARTING, D.RUNNING)
    assert is_running(dep.pid)  # and nothing was signalled
    stop_all(path)


def test_a_replacement_is_all_or_nothing_and_retires_the_old_only_at_handover(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline_v2.deployer import Deployer

    path, store, _ = passed_trial(tmp_path, "good", trials=2)
    old, new = (t.id for t in store.list_trials())
    store.begin_deployment(old, "deploy", str(tmp_path / "old"), 1.0, "test")  # in backoff
    deployer = Deployer(load_config(path), store, Supervisor())

    def fails(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Store, "begin_deployment", fails)
    with pytest.raises(RuntimeError):
        deployer.deploy(new, 2.0, "promoted: replaces trial 0", replaces=old)
    assert store.get_trial(old).status == TrialStatus.DEPLOYED
    assert [d.status for d in store.deployments()] == [D.BACKOFF]
    monkeypatch.undo()
    successor = deployer.deploy(new, 3.0, "promoted: replaces trial 0", replaces=old)
    assert store.get_trial(old).status == TrialStatus.DEPLOYED  # until the new one proves it
    assert successor.replaces == old
    deployer.hand_over(successor, 4.0)  # its first heartbeat
    assert store.get_trial(old).status == TrialStatus.RETIRED
    assert store.get_trial(new).status == TrialStatus.DEPLOYED


# -- 3. a lost race is one trial's trouble, not the daemon's --------------------------------------

def test_stop_racing_an_evaluation_never_ends_the_daemon(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline_v2 import control, deployer

    path, store, _ = first_deployment(tmp_path, "good", evaluate_after="1h",
                                      heartbeat_timeout=10**7, timeout_seconds=10**7)
    real = deployer.evaluate_gates
    raced: list[list[str]] = []

    def after_a_stop(*args, **kwargs) -> list[str]:
        if not raced:  # `pipeline stop` commits after the evaluation read the trial
            other = store_for(path)
            raced.append(control.stop(other, load_config(path), "0", wait=False))
            other.close()
        return real(*args, **kwargs)

    monkeypatch.setattr(deployer, "evaluate_gates", after_a_stop)
    daemon = Daemon(path, mode="until_idle", timeout=20, clock=lambda: time.time() + 7200)
    assert daemon.run().idle  # evaluation is due at once; the race is lost, the loop goes on
    trial = store.find_trial("0")
    assert raced == [["s:0"]]
    assert trial.status == TrialStatus.RETIRED and trial.reason == "stopped by hand"
    assert store.latest_deployment(trial.id).status == D.STOPPED
    errors = [e for e in store.events_of(trial.id) if e["kind"] == "deployment.error"]
    assert len(errors) == 1 and "retired -> validated is not allowed" in errors[0]["message"]


# -- 4. a restart keeps the deploy stage of a running trader --------------------------------------

def test_a_restarted_daemon_records_the_verdict_on_the_deploy_stage(tmp_path: Path) -> None:
    path, store, _ = first_deployment(tmp_path, "good", evaluate_after="1h",
                                      heartbeat_timeout=10**7, timeout_seconds=10**7)
    trial = store.find_trial("0")
    assert store.stages_of(trial.id)[1].status == StageStatus.RUNNING
    later = time.time() + 7200  # the injected clock: two hours on, evaluation is due
    Daemon(path, mode="forever", timeout=1.5, clock=lambda: time.time() + 7200).run()
    deploy = store.stages_of(trial.id)[1]
    assert store.get_trial(trial.id).status == TrialStatus.VALIDATED
    assert (deploy.status, deploy.attempts) == (StageStatus.PASSED, 1)
    assert deploy.results["sharpe"] == 1.0 and deploy.finished_at >= later - 60
    stop_all(path)
