"""Deployments with real processes: restarts, backoff, crash loops, hangs, stubborn traders,
re-adoption after a SIGKILLed daemon, recycled pids, promotion and evaluation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline_v2 import plan
from pipeline_v2.models import DeploymentStatus, StageStatus, TrialStatus
from pipeline_v2.supervisor import Identity, identify, is_alive, signal_group
from tests.engine_helpers import FIX, ROOT, run, spawn_daemon, store_for, wait_for, workspace

TRADER = str(ROOT / "tests" / "fixtures" / "trader.py")
D = DeploymentStatus


pytestmark = pytest.mark.usefixtures("no_trader_outlives_its_test")


def traders(tmp_path: Path, shims: bool = False) -> list[psutil.Process]:
    """Fixture traders (and their shims) started for this test."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(tmp_path) in cmdline and TRADER in cmdline and (
                shims or "shim.py" not in cmdline):
            found.append(proc)
    return found


def deploy_config(mode: str, **overrides) -> dict:
    return {
        "command": [sys.executable, TRADER, mode, "{run_dir}", "{params[x]}"],
        "rank_by": "a.sharpe", "max_deployments": 2, "min_improvement": 0.05,
        "stop_grace_seconds": 0.5, "heartbeat_timeout": 1,
        "restart": {"backoff": [0.05, 0.4], "max_crashes": 3, "window_seconds": 30},
        "evaluate_after": "1h", "gates": {"sharpe": ">= 0.2"}, **overrides,
    }


def stages(mode: str, **overrides) -> dict:
    return {"a": {"run": f"{FIX}:metric_from_param", "max_attempts": 1},
            "deploy": deploy_config(mode, **overrides)}


def pids_in(run_dir: Path, name: str = "pids") -> list[int]:
    path = run_dir / name
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_finished_trader_is_evaluated_to_validated(tmp_path: Path) -> None:
    path = workspace(tmp_path, stages("finish"), trials=2)
    assert run(path).idle
    store = store_for(path)
    for trial in store.list_trials():
        assert trial.status == TrialStatus.VALIDATED
        deploy = store.stages_of(trial.id)[1]
        assert deploy.status == StageStatus.PASSED
        assert deploy.results["sharpe"] == trial.params["x"]
        assert store.latest_deployment(trial.id).status == D.EXITED


def test_failing_gates_retire_the_trial_with_reasons(tmp_path: Path) -> None:
    path = workspace(tmp_path, stages("finish", gates={"sharpe": ">= 2.5"}, max_deployments=3),
                     trials=3)
    run(path)
    store = store_for(path)
    statuses = [t.status for t in store.list_trials()]
    assert statuses == [TrialStatus.RETIRED, TrialStatus.RETIRED, TrialStatus.VALIDATED]
    assert store.find_trial("0").reason == "sharpe 1.0 < 2.5"


def test_restart_after_a_crash(tmp_path: Path) -> None:
    path = workspace(tmp_path, stages("crash_once"))
    run(path)
    store = store_for(path)
    trial = store.find_trial("0")
    dep = store.latest_deployment(trial.id)
    assert trial.status == TrialStatus.VALIDATED
    assert (dep.restarts, len(dep.crash_times), dep.last_exit) == (1, 1, 0)
    kinds = [e["kind"] for e in store.events_of(trial.id)]
    assert kinds.count("deployment.crashed") == 1 and kinds.count("deployment.starting") == 2


def test_crash_loop_ends_in_fatal_and_never_spins(tmp_path: Path) -> None:
    path = workspace(tmp_path, stages("crash"))
    assert run(path).idle
    store = store_for(path)
    trial = store.find_trial("0")
    dep = store.latest_deployment(trial.id)
    assert dep.status == D.FATAL
    assert len(pids_in(Path(dep.run_dir))) == 3  # max_crashes starts, then no more
    assert trial.status == TrialStatus.FAILED
    assert trial.reason == "crash loop: 3 crashes within 30s, last: exit code 1: out of cash"
    crashes = [e["message"] for e in store.events_of(trial.id) if e["kind"] ==
               "deployment.crashed"]
    assert crashes == ["exit code 1: out of cash"] * 3  # the exit and the trader's last words
    assert "deployment.crash_loop" in [e["kind"] for e in store.events_of(trial.id)]
    gaps = [b - a for a, b in zip(dep.crash_times, dep.crash_times[1:], strict=False)]
    assert all(gap >= 0.025 for gap in gaps)  # backoff respected (0.05 s with jitter >= 0.5)


def test_backoff_grows_then_resets_after_a_stable_run() -> None:
    backoff, window = [1, 60], 60
    times: tuple[float, ...] = ()
    delays = []
    for now in (100.0, 101.0, 103.0, 107.0):
        decision = plan.after_crash(times, ran_for=0.5, now=now, max_crashes=9,
                                    window_seconds=window, backoff=backoff, jitter=1.0)
        times, delays = decision.crash_times, [*delays, decision.delay]
    assert delays == [1, 2, 4, 8]
    stable = plan.after_crash(times, ran_for=window + 1, now=110.0, max_crashes=9,
                              window_seconds=window, backoff=backoff, jitter=1.0)
    assert stable.delay == 1
    assert plan.restart_delay(20, backoff, jitter=1.0) == 60
    assert plan.restart_delay(1, backoff, jitter=0.0) == 0.5


def test_old_crashes_leave_the_window() -> None:
    decision = plan.after_crash((0.0, 1.0, 2.0), ran_for=1, now=100.0, max_crashes=3,
                                window_seconds=60, backoff=[1, 60], jitter=1.0)
    assert not decision.fatal and decision.crash_times == (100.0,)


def test_hung_trader_is_stopped_and_restarted(tmp_path: Path) -> None:
    path = workspace(tmp_path, stages("hang", heartbeat_timeout=0.4, timeout_seconds=0.4))
    run(path, mode="forever", timeout=4)
    store = store_for(path)
    trial = store.find_trial("0")
    dep = store.latest_deployment(trial.id)
    messages = [e["message"] or "" for e in store.events_of(trial.id)]
    assert any(m.startswith("hung: no heartbeat for 0.4s") for m in messages)
    assert dep.restarts >= 1
    assert len(pids_in(Path(dep.run_dir))) >= 2


def test_stubborn_trader_and_its_children_are_killed_after_the_grace(
        tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, stages("ignore_term"))
    run(path, mode="forever", timeout=1.5)  # leaves it running, as a stopping daemon does
    store = store_for(path)
    dep = store.latest_deployment(store.find_trial("0").id)
    run_dir = Path(dep.run_dir)
    everyone = pids_in(run_dir) + pids_in(run_dir, "children")
    assert len(everyone) == 3 and all(psutil.pid_exists(p) for p in everyone)
    result = invoke("stop", "0")  # SIGTERM is ignored: only the SIGKILL after the grace ends it
    assert result.exit_code == 0, result.output
    assert result.stdout == "stopped: s:0\n"
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() !=
                             psutil.STATUS_ZOMBIE for p in everyone), 5)
    assert store.find_trial("0").status == TrialStatus.RETIRED
    assert store.get_deployment(dep.id).status == D.STOPPED


def test_sigkilled_daemon_traders_are_re_adopted_without_duplicates(tmp_path: Path) -> None:
    path = workspace(tmp_path, stages("good"), trials=2)
    proc = spawn_daemon(path)
    store = store_for(path)
    wait_for(lambda: len(store.deployments("running")) == 2, 20)
    before = {d.trial_id: d.pid for d in store.deployments("running")}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert all(psutil.pid_exists(pid) for pid in before.values())  # orphaned, not killed
    run(path, mode="forever", timeout=1.5)  # a new daemon: adopts, starts nothing new
    after = {d.trial_id: d.pid for d in store.deployments("running")}
    assert after == before
    for dep in store.deployments():
        assert len(pids_in(Path(dep.run_dir))) == 1  # no duplicate trader was started
    result = subprocess.run([sys.executable, "-m", "pipeline_v2", "stop", "--all", "--config",
                             str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() !=
                             psutil.STATUS_ZOMBIE for p in before.values()), 5)


def test_a_recycled_pid_is_never_signalled() -> None:
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                              start_new_session=True)
    try:
        real = identify(victim.pid)
        impostor = Identity(real.pid, real.create_time - 100.0, real.boot_id)
        other_boot = Identity(real.pid, real.create_time, "another-boot")
        assert not is_alive(impostor) and not is_alive(other_boot)
        assert not signal_group(impostor, signal.SIGKILL)
        assert not signal_group(other_boot, signal.SIGKILL)
        time.sleep(0.1)
        assert victim.poll() is None
        assert signal_group(real, signal.SIGKILL)
        assert victim.wait(timeout=5) == -signal.SIGKILL
    finally:
        victim.kill()
        victim.wait()


def test_at_most_max_deployments_run_at_any_moment(tmp_path: Path) -> None:
    # max_deployments, plus one during a handover (the replacement proves it starts first).
    path = workspace(tmp_path, stages("good"), trials=6)
    proc = spawn_daemon(path)
    store = store_for(path)
    try:
        wait_for(lambda: len(store.deployments("running")) == 2, 20)

        def ranks() -> list[int]:
            return sorted(store.get_trial(d.trial_id).params["x"]
                          for d in store.deployments("running"))

        seen, deadline = 0, time.monotonic() + 60
        # Watched through every handover (one at a time) until the two best run.
        while ranks() != [5, 6] or seen < 2:
            live = store.deployments("starting", "running", "stopping")
            running = traders(tmp_path)
            assert len(live) <= 3 and len(running) <= 3
            seen = max(seen, len(running))
            assert time.monotonic() < deadline, f"never converged: {ranks()}"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        subprocess.run([sys.executable, "-m", "pipeline_v2", "stop", "--all", "--config",
                        str(path)], capture_output=True, cwd=tmp_path)


def test_a_better_trial_replaces_the_worst(tmp_path: Path) -> None:
    from tests.optuna_helpers import make_study

    path = workspace(tmp_path, stages("good"), trials=2)
    store = store_for(path)
    daemon = spawn_daemon(path)  # waits for what it expects: never for a guessed duration
    try:
        wait_for(lambda: sorted(d.trial_id for d in store.deployments("running")) == [1, 2])
        study = make_study(f"sqlite:///{tmp_path / 'optuna.db'}", "s")
        study.enqueue_trial({"x": 9})
        trial = study.ask()
        trial.suggest_int("x", 0, 100)
        study.tell(trial, 9.0)
        wait_for(lambda: store.find_trial("0").status == TrialStatus.RETIRED
                 and len(store.deployments("running")) == 2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)
    worst = store.find_trial("0")
    assert worst.status == TrialStatus.RETIRED
    assert worst.reason == "replaced by trial 2"
    running = store.deployments("running")
    assert sorted(store.get_trial(d.trial_id).number for d in running) == [1, 2]
    control_stop = subprocess.run([sys.executable, "-m", "pipeline_v2", "stop", "--all",
                                   "--config", str(path)], capture_output=True, cwd=tmp_path)
    assert control_stop.returncode == 0


def test_promotion_plan() -> None:
    assert plan.promote([(1, 0.5), (2, 0.9), (3, 0.7)], [], 2, 0.05) == plan.Promotion((2, 3))
    full = [(10, 0.6), (11, 0.8)]
    assert plan.promote([(1, 0.64)], full, 2, 0.05) == plan.Promotion()
    assert plan.promote([(1, 0.66)], full, 2, 0.05) == plan.Promotion((), ((10, 1),))
    assert plan.rank_of("a.sharpe", None, {"a": {"sharpe": 1.5}}) == 1.5
    assert plan.rank_of("value", 3.0, {}) == 3.0
    assert plan.rank_of("a.missing", 3.0, {"a": {}}) == float("-inf")


@pytest.mark.parametrize(("waiting", "deployed"), [
    (0.6, 0.6),  # as good, with min_improvement 0: no gain, only a trader's restart
    (float("-inf"), float("-inf")),  # the rank metric missing on both
])
def test_promotion_never_churns_an_equal_trader(waiting: float, deployed: float) -> None:
    assert plan.promote([(1, waiting)], [(10, deployed)], 1, 0.0) == plan.Promotion()
    assert plan.promote([(1, 0.7)], [(10, 0.6)], 1, 0.0) == plan.Promotion((), ((10, 1),))


@pytest.mark.parametrize(("mode", "message"), [
    ("nothing", "error: no trial \"7\"; known: s: 1 trials, 0..0\n"),
])
def test_deploy_unknown_trial(tmp_path: Path, invoke, mode: str, message: str) -> None:
    workspace(tmp_path, stages("good"))
    invoke("discover")
    result = invoke("deploy", "7")
    assert result.exit_code == 2
    assert result.stderr == message


def test_trader_log_rotates_by_size_without_losing_lines(tmp_path: Path) -> None:
    from pipeline_v2.supervisor import Supervisor

    script = ("import sys, time\n"
              "for i in range(3000):\n"
              "    print(f'line {i:05d}', flush=True)\n"
              "    if i % 500 == 0: time.sleep(0.01)\n")
    sup = Supervisor()
    sup.spawn(1, [sys.executable, "-c", script], tmp_path, log_max_bytes=4096, log_backups=3)
    wait_for(lambda: bool(sup.exited()), 20)
    assert (tmp_path / "exit_code").read_text() == "0"
    parts = [tmp_path / f"paper.log.{i}" for i in (3, 2, 1)] + [tmp_path / "paper.log"]
    assert all(p.exists() for p in parts) and not (tmp_path / "paper.log.4").exists()
    assert all(p.stat().st_size <= 4096 for p in parts)
    lines = "".join(p.read_text() for p in parts).splitlines()
    numbers = [int(line.split()[1]) for line in lines]
    assert numbers == list(range(numbers[0], 3000))  # a contiguous tail: nothing lost
    assert len(numbers) > 3 * 4096 // 11
