"""Stage attempts on a real Dask LocalCluster (worker processes): the daemon's guarantees hold."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import psutil
import pytest

from pipeline_v2.models import StageStatus, TrialStatus
from tests.engine_helpers import FIX, run, spawn_daemon, store_for, wait_for, workspace

distributed = pytest.importorskip("distributed", reason="the [dask] extra is not installed")

pytestmark = [
    # Dask's own shutdown chatter (closing comms, cancelled instructions) is not ours to judge.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def _cluster(port: int = 0, workers: int = 2) -> distributed.LocalCluster:
    # The workers are spawned with this process's sys.path, so they import tests.fixtures.
    return distributed.LocalCluster(
        processes=True, n_workers=workers, threads_per_worker=1, dashboard_address=":0",
        scheduler_port=port, silence_logs=50)


@pytest.fixture(scope="module")
def cluster():
    with _cluster() as c:
        yield c


def stage(target: str, **kw) -> dict:
    return {"run": f"{FIX}:{target}", "max_attempts": 1, "timeout_seconds": 20, **kw}


def dask_workspace(tmp_path: Path, address: str, stages: dict, **kw) -> Path:
    return workspace(tmp_path, stages, daemon={"check_interval": 0.2, "workers": 2,
                                               "http": None, "executor": address}, **kw)


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def events(store, trial_id: int, kind: str) -> list[dict]:
    return [e for e in store.events_of(trial_id) if e["kind"] == kind]


def test_success_error_and_retry_run_on_the_workers(tmp_path: Path, cluster) -> None:
    path = dask_workspace(tmp_path, cluster.scheduler_address,
                          {"a": stage("where"), "b": stage("flaky", max_attempts=3)})
    summary = run(path)
    assert summary.idle and summary.attempts == 1 + 3
    store = store_for(path)
    for trial in store.list_trials():
        a, b = store.stages_of(trial.id)
        assert trial.status == TrialStatus.PASSED
        assert a.results["dask_worker"] in cluster.scheduler_info["workers"]
        assert (b.status, b.attempts) == (StageStatus.PASSED, 3)
        failures = [e["message"] for e in events(store, trial.id, "stage.pending")]
        assert failures[0].startswith("attempt 1/3 failed, retry in ")
        assert failures[0].endswith(": RuntimeError: flaky failure 1")


def test_timeout_cancels_the_future_and_kills_the_worker_side_group(
    tmp_path: Path, cluster
) -> None:
    path = dask_workspace(tmp_path, cluster.scheduler_address,
                          {"a": stage("hang", timeout_seconds=3)})  # > the child's start-up
    run(path)
    store = store_for(path)
    trial = store.find_trial("s:0")
    (a,) = store.stages_of(trial.id)
    assert (a.status, a.attempts) == (StageStatus.FAILED, 1)
    assert a.error_message == "timed out after 3s (process group killed)"
    run_dir = tmp_path / "logs" / "trials" / "s" / "0"
    for name in ("worker.pid", "grandchild.pid"):
        pid = int((run_dir / name).read_text())
        wait_for(lambda pid=pid: is_gone(pid), timeout=5)


def test_a_worker_killed_mid_attempt_is_an_error_retried(tmp_path: Path, cluster) -> None:
    pid_file = tmp_path / "attempt1.pid"
    path = dask_workspace(tmp_path, cluster.scheduler_address,
                          {"a": stage("block_first", max_attempts=2,
                                      params={"pid_file": str(pid_file)})})
    daemon = spawn_daemon(path, "--until-idle", "--timeout", "60")
    wait_for(pid_file.exists)
    stage_pid = int(pid_file.read_text())
    psutil.Process(stage_pid).parent().kill()  # the Dask worker process running it
    assert daemon.wait(timeout=60) == 0
    store = store_for(path)
    trial = store.find_trial("s:0")
    (a,) = store.stages_of(trial.id)
    assert (trial.status, a.status, a.attempts) == (TrialStatus.PASSED, StageStatus.PASSED, 2)
    (failure,) = events(store, trial.id, "stage.pending")
    assert "lost" in failure["message"]
    wait_for(lambda: is_gone(stage_pid), timeout=5)


def test_scheduler_gone_then_back_on_the_same_port(tmp_path: Path) -> None:
    # One worker: a graceful close retires it first, and with a second worker Dask would re-run
    # the blocked attempt there (a "worker lost" retry racing into the dying scheduler).
    first = _cluster(workers=1)
    address = first.scheduler_address
    port = int(address.rsplit(":", 1)[1])
    pid_file = tmp_path / "attempt1.pid"
    path = dask_workspace(tmp_path, address, {"a": stage("block_first", max_attempts=2,
                                                         params={"pid_file": str(pid_file)})},
                          retry={"delays": [0.5]})
    daemon = spawn_daemon(path, "--until-idle", "--timeout", "90")
    try:
        wait_for(pid_file.exists, timeout=30)
        first.close()
        store = store_for(path)
        wait_for(lambda: store.health().get("executor", {}).get("status") == "error", 30)
        assert daemon.poll() is None  # up, and degraded
        with _cluster(port):
            assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    trial = store.find_trial("s:0")
    (a,) = store.stages_of(trial.id)
    assert (trial.status, a.status, a.attempts) == (TrialStatus.PASSED, StageStatus.PASSED, 2)
    (failure,) = events(store, trial.id, "stage.pending")
    assert "lost" in failure["message"]


def test_daemon_sigkilled_with_attempts_in_flight(tmp_path: Path, cluster) -> None:
    pid_file = tmp_path / "attempt1.pid"
    path = dask_workspace(tmp_path, cluster.scheduler_address,
                          {"a": stage("block_first", max_attempts=2,
                                      params={"pid_file": str(pid_file)})})
    daemon = spawn_daemon(path)
    wait_for(pid_file.exists, timeout=30)
    stage_pid = int(pid_file.read_text())
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    # Its client is gone: the scheduler drops the task and the worker kills its group.
    wait_for(lambda: is_gone(stage_pid), timeout=15)
    summary = run(path)
    assert summary.idle
    store = store_for(path)
    trial = store.find_trial("s:0")
    (a,) = store.stages_of(trial.id)
    # An interruption is not a failure: the attempt is run again under the same number.
    assert (a.status, a.attempts, a.results["attempt"]) == (StageStatus.PASSED, 1, 1)
    assert len(events(store, trial.id, "stage.passed")) == 1
    assert [e["message"] for e in events(store, trial.id, "stage.pending")] == [
        "attempt 1 interrupted (1 in a row)"
    ]


def test_cancel_from_the_cli_kills_the_attempt_on_the_worker(
    tmp_path: Path, cluster, invoke
) -> None:
    pid_file = tmp_path / "attempt1.pid"
    path = dask_workspace(tmp_path, cluster.scheduler_address,
                          {"a": stage("block_first", params={"pid_file": str(pid_file)})})
    daemon = spawn_daemon(path)
    try:
        wait_for(pid_file.exists, timeout=30)
        stage_pid = int(pid_file.read_text())
        result = invoke("cancel", "s:0")
        assert result.exit_code == 0, result.output
        wait_for(lambda: is_gone(stage_pid), timeout=10)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    store = store_for(path)
    (a,) = store.stages_of(store.find_trial("s:0").id)
    assert a.status == StageStatus.CANCELLED


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_cluster_degrades_and_starts_nothing(tmp_path: Path, invoke) -> None:
    address = f"tcp://127.0.0.1:{_closed_port()}"
    path = dask_workspace(tmp_path, address, {"a": stage("ok")})
    summary = run(path, mode="forever", timeout=1.5)
    assert summary.reason == "timeout" and summary.attempts == 0
    store = store_for(path)
    (a,) = store.stages_of(store.find_trial("s:0").id)
    assert (a.status, a.attempts) == (StageStatus.PENDING, 0)
    health = store.health()["executor"]
    assert health["status"] in ("connecting", "error")
    # Still connecting (a refused port is retried for the connect timeout), or failed.
    assert f"the Dask scheduler at {address}" in health["message"]
    status = invoke("status", "--json")
    assert json.loads(status.stdout)["pipeline"] in ("degraded", "down")


def test_missing_extra_is_one_line(tmp_path: Path, invoke, monkeypatch) -> None:
    dask_workspace(tmp_path, "tcp://127.0.0.1:8786", {"a": stage("ok")})
    monkeypatch.setitem(__import__("sys").modules, "distributed", None)
    result = invoke("run-daemon", "--once")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: daemon.executor: a Dask scheduler address needs Dask: "
        "pip install 'pipeline_v2[dask]'\n"
    )


def test_a_late_answer_never_reaches_a_newer_attempt(tmp_path: Path, cluster) -> None:
    """Results are keyed by stage id and attempt: attempt 1's answer, arrived after the attempt
    was killed (a timeout, a cancel), is dropped; attempt 2 of the same stage gets its own."""
    import selectors

    from pipeline_v2.stages.dask_executor import DaskExecutor

    def task(attempt: int) -> dict:
        context = {"study": "s", "number": 0, "trial_id": 1, "params": {}, "user_attrs": {},
                   "value": 1.0, "values": [1.0], "model_dir": str(tmp_path),
                   "run_dir": str(tmp_path / "run"), "stage": "a", "results": {},
                   "stage_params": {}, "attempt": attempt, "storage": ""}
        return {"target": f"{FIX}:where", "context": context,
                "log_path": str(tmp_path / "run" / "a.log")}

    selector = selectors.DefaultSelector()
    executor = DaskExecutor(cluster.scheduler_address, selector)
    try:
        wait_for(lambda: executor.is_ready)
        executor.submit(7, task(1), 20)
        first = executor._attempts[7].future
        wait_for(first.done)  # answered, but not reaped yet...
        executor.kill(7)  # ...when the runner gave up on it
        executor.submit(7, task(2), 20)
        answers: list = []
        wait_for(lambda: bool(answers.extend(executor.reap()) or answers))
        assert [(sid, o.kind, o.metrics["attempt"]) for sid, o in answers] == [(7, "ok", 2)]
        assert executor.running == set()
        assert executor.reap() == []
    finally:
        executor.close()
        selector.close()
