"""An idle daemon wakes only for real events or due times; a trader's shim stays small."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline_v2 import deployer as deployer_module
from pipeline_v2.config import load_config
from pipeline_v2.daemon import CONTROL_CHECK_S, CONTROL_FALLBACK_S, Daemon
from pipeline_v2.daemon_ops import DaemonOps
from pipeline_v2.discovery import Discovery
from pipeline_v2.http import api, server
from pipeline_v2.http.routes import Request
from pipeline_v2.models import DeploymentStatus
from pipeline_v2.store import open_store
from pipeline_v2.supervisor import SHIM
from pipeline_v2.wake import WakeSocket
from tests.engine_helpers import FIX, workspace
from tests.test_wake import RecordingSelector, readable

TOKEN = "a-token-of-sixteen-chars"


# -- the shim ---------------------------------------------------------------------------------

def test_the_shim_imports_no_pure_python_module_it_can_do_without(tmp_path: Path) -> None:
    """`signal` (and its enum), contextlib and our package each cost every trader's shim
    memory; the shim still records the trader's exit code."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", SHIM, str(tmp_path / "exit_code"),
         str(tmp_path / "paper.log"), "0", "0", "--", "sh", "-c", "exit 3"],
        capture_output=True, text=True, timeout=30, check=False)
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert done.returncode == 3, done.stderr
    assert (tmp_path / "exit_code").read_text() == "3"
    assert "_signal" in imported  # the sanity check that the listing worked
    assert not imported & {"signal", "enum", "contextlib", "functools", "pipeline_v2"}


def test_the_shim_knows_whether_anything_is_left_to_signal() -> None:
    """No child (reaped or never forked) means no descendant: the /proc walk is skipped."""
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); import shim\n"
            "seen = [shim.has_children()]\n"
            "pid = os.fork()\n"
            "if pid == 0: os._exit(0)\n"
            "os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)\n"  # exited, not yet reaped
            "seen.append(shim.has_children())\n"
            "os.waitpid(pid, 0)\n"
            "seen.append(shim.has_children())\n"
            "print(seen)\n")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(Path(SHIM).parent)],
                          capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip() == "[False, True, False]"


# -- the loop's waits -------------------------------------------------------------------------

def idle_daemon(tmp_path: Path) -> Daemon:
    (tmp_path / "stages.json").write_text(json.dumps({"optuna": {"storage": "sqlite:///o.db"}}))
    daemon = Daemon(tmp_path / "stages.json", mode="forever")
    mono = daemon.monotonic()
    daemon.started = daemon.clock()
    daemon.selector = RecordingSelector()
    daemon.runner = SimpleNamespace(running=set(), is_ready=True)
    daemon.deployer = SimpleNamespace(next_due=lambda at, **_: None, next_check_due=lambda: None)
    daemon.store = SimpleNamespace(next_attempt_time=lambda: None)
    daemon.ops = SimpleNamespace(waiting=lambda mono, timeout: None)
    daemon.next_discovery = daemon.next_health = mono + 3600
    daemon.control_every = CONTROL_FALLBACK_S  # as with a bound wake socket
    daemon.next_control_check = mono + CONTROL_FALLBACK_S
    return daemon


def test_the_watchdog_and_the_disk_probe_are_due_times(tmp_path: Path, monkeypatch) -> None:
    daemon = idle_daemon(tmp_path)
    daemon._wait(daemon.clock(), daemon.monotonic())
    assert daemon.selector.timeouts[-1] > CONTROL_CHECK_S  # nothing due: a long sleep
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    daemon.next_watchdog = daemon.monotonic() + 1.0
    daemon._wait(daemon.clock(), daemon.monotonic())
    assert daemon.selector.timeouts[-1] <= 1.0  # systemd would kill a daemon that slept on
    monkeypatch.delenv("WATCHDOG_USEC")
    daemon.disk_full = "no space left"
    daemon.next_space_probe = daemon.monotonic() + 2.0
    daemon._wait(daemon.clock(), daemon.monotonic())
    assert daemon.selector.timeouts[-1] <= 2.0  # the probe that lets attempts start again


class StopAfterOneWait(Daemon):
    """Records the first wait's timeout, then asks the loop to stop."""

    waits: list[float]

    def _select(self, timeout: float) -> list:
        self.waits = [*getattr(self, "waits", []), timeout]
        self.stop_requests = 1
        return []


def test_with_a_wake_socket_the_idle_loop_does_not_poll_for_controls(tmp_path: Path) -> None:
    (tmp_path / "stages.json").write_text(json.dumps({
        "optuna": {"storage": "sqlite:///o.db"},
        "daemon": {"check_interval": 3600, "health_check_interval": 3600, "http": None}}))
    daemon = StopAfterOneWait(tmp_path / "stages.json", mode="forever")
    assert daemon.run().reason == "signal"
    assert daemon.waits[0] > CONTROL_CHECK_S + 1  # the fallback re-read only, a minute away


def test_without_a_wake_socket_the_controls_are_read_every_few_seconds(tmp_path: Path,
                                                                        monkeypatch) -> None:
    monkeypatch.setattr("pipeline_v2.wake.MAX_PATH", 1)  # no path fits: no socket
    (tmp_path / "stages.json").write_text(json.dumps({
        "optuna": {"storage": "sqlite:///o.db"},
        "daemon": {"check_interval": 3600, "health_check_interval": 3600, "http": None}}))
    daemon = StopAfterOneWait(tmp_path / "stages.json", mode="forever")
    daemon.run()
    assert daemon.waits[0] <= CONTROL_CHECK_S


# -- what wakes it ------------------------------------------------------------------------------

def test_an_http_action_wakes_the_daemon(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:metric_from_param"}},
                     daemon={"http": None, "http_token": TOKEN})
    config = load_config(path)
    store = open_store(config)
    Discovery(config, store).poll()
    wake = WakeSocket(config.state_db_path)
    try:
        response = api.post_action(Request(
            store=store, config=config, params={}, groups={"ref": "s:0", "action": "pause"},
            headers={"Authorization": f"Bearer {TOKEN}"}))
        assert response.status == 200, response.body
        assert readable(wake)
    finally:
        wake.close()
        store.close()


def test_the_http_thread_sleeps_until_a_request_or_stop(tmp_path: Path, monkeypatch) -> None:
    """No poll_interval: the server's selector waits without a timeout."""
    timeouts: list[float | None] = []

    class Recording(selectors.DefaultSelector):  # type: ignore[misc, valid-type]
        def select(self, timeout: float | None = None) -> list:
            timeouts.append(timeout)
            return super().select(timeout)

    monkeypatch.setattr(server.selectors, "DefaultSelector", Recording)
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:metric_from_param"}},
                     daemon={"http": "127.0.0.1:0"})
    config = load_config(path)
    service = server.HttpService(lambda: config)
    assert service.start()
    try:
        assert service.bound is not None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{service.bound[1]}/healthz",
                                        timeout=10) as response:
                response.read()
        except urllib.error.HTTPError:
            pass  # any answer will do: the request was served
    finally:
        assert service.stop()
    assert service.thread is None
    assert timeouts and set(timeouts) == {None}


def test_the_status_line_is_only_counted_for_systemd(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr("pipeline_v2.monitor.record_all", lambda *args: None)

    def counts() -> dict:
        raise AssertionError("counted trials for a STATUS line nobody receives")

    daemon = SimpleNamespace(runner=SimpleNamespace(running=set()), failing=set(),
                             disk_full=None, store=SimpleNamespace(trial_counts=counts),
                             config=None)
    ops = DaemonOps.__new__(DaemonOps)
    ops.daemon, ops.facts = daemon, SimpleNamespace()
    ops.check(0.0)
    assert ops.facts.loop_lag == 0.0


# -- the deployer's checks of running traders -----------------------------------------------------

@pytest.mark.parametrize(("status", "waited", "heartbeat_timeout", "timeout", "expected"), [
    ("starting", 0.0, 3600, 3600, 1.0),  # a fresh trader: each second
    ("starting", 20.0, 3600, 3600, 5.0),  # a quarter of the time it has waited
    ("starting", 300.0, 3600, 3600, 10.0),  # at most NOTE_EVERY_S
    ("starting", 300.0, 3600, 8, 2.0),  # a hang is noticed within timeout_seconds / 4
    ("running", 300.0, 20, 3600, 5.0),  # heartbeat_timeout / 4
    ("running", 300.0, 3600, 3600, 10.0),
])
def test_traders_are_checked_less_often_the_longer_they_take(
        status: str, waited: float, heartbeat_timeout: float, timeout: float,
        expected: float) -> None:
    now = 1_000_000.0
    dep = SimpleNamespace(status=DeploymentStatus(status), spawned_at=now - waited)
    deployer = deployer_module.Deployer.__new__(deployer_module.Deployer)
    deployer.stage = SimpleNamespace(heartbeat_timeout=heartbeat_timeout, timeout_seconds=timeout)
    deployer.store = SimpleNamespace(deployments=lambda *statuses: [dep])
    assert deployer._check_every(now) == pytest.approx(expected)


def test_no_wake_for_the_promotion_spacing_unless_a_pass_was_deferred() -> None:
    deployer = deployer_module.Deployer.__new__(deployer_module.Deployer)
    deployer.stage = SimpleNamespace(enabled=True)
    deployer.store = SimpleNamespace(deployments=lambda *statuses: [])
    deployer.mono, deployer._promote_not_before, deployer._promote_deferred = 100.0, 101.0, False
    assert deployer.next_check_due() is None  # just after a pass: nothing to pass again for
    deployer._promote(1_000_000.0)  # a turn within the spacing: its pass waits
    assert deployer.next_check_due() == 101.0


def test_the_heartbeats_noted_by_one_check_are_one_write(tmp_path: Path) -> None:
    """The display copies of 100 traders' heartbeats: one transaction, not 100."""
    now = 1_000_000.0
    deps = []
    for i in range(3):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        (run_dir / "heartbeat").touch()
        os.utime(run_dir / "heartbeat", (now - 1, now - 1))
        deps.append(SimpleNamespace(id=i, trial_id=i, status=DeploymentStatus.RUNNING,
                                    run_dir=str(run_dir), spawned_at=now - 100, started_at=now,
                                    last_heartbeat=None, metrics=None))
    writes: list = []
    deployer = deployer_module.Deployer.__new__(deployer_module.Deployer)
    deployer.stage = SimpleNamespace(heartbeat_timeout=60, timeout_seconds=60,
                                     evaluate_after_seconds=3600)
    deployer.store = SimpleNamespace(deployments=lambda *statuses: deps,
                                     note_deployments=lambda notes, at: writes.append(notes))
    deployer.supervisor = SimpleNamespace(watched={0: None, 1: None, 2: None})
    deployer.noted, deployer.mono = {}, 0.0
    deployer._check_running(now)
    assert writes == [[(i, {"last_heartbeat": now - 1}) for i in range(3)]]


def test_promotion_runs_again_without_an_event_only_rarely_or_for_study_gates() -> None:
    """An idle loop does not re-rank every 30 s: only `study.` gates (recomputed at most that
    often) need it; otherwise a pass follows its inputs, a reload, or a 5-minute safety net."""
    passes: list[float] = []
    deployer = deployer_module.Deployer.__new__(deployer_module.Deployer)
    stage = SimpleNamespace(parsed_gates=[], enabled=True, max_deployments=1)
    deployer.stage = stage
    deployer.store = SimpleNamespace(promotion_inputs=lambda: (1, 1, 7),
                                     deployments=lambda *statuses: [],
                                     handover_targets=lambda: set())
    deployer._promotion = lambda: passes.append(deployer.mono) or SimpleNamespace(
        start=[], replace=[])
    deployer._promoted_for, deployer._promote_again = (), 0.0
    deployer._promote_not_before, deployer._promote_deferred = 0.0, False
    for deployer.mono in (0.0, 31.0, 299.0, 301.0):
        deployer._promote(1_000_000.0)
    assert passes == [0.0, 301.0]
    deployer.configure = deployer_module.Deployer.configure.__get__(deployer)
    deployer.store.ensure_rank_index = lambda rank_by: None
    deployer.configure(SimpleNamespace(deploy_stage=None, logs_path=Path("logs")))
    deployer.stage, deployer.mono = stage, 302.0
    deployer._promote(1_000_000.0)  # a reload: the slots or the ranking may have changed
    assert passes == [0.0, 301.0, 302.0]
