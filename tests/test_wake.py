"""The idle daemon sleeps until something is due; a CLI change wakes it through a socket."""

from __future__ import annotations

import json
import selectors
import time
from pathlib import Path
from types import SimpleNamespace

from pipeline_v2.daemon import CONTROL_CHECK_S, Daemon
from pipeline_v2.wake import WakeSocket, wake_daemon, wake_path


def readable(wake: WakeSocket, timeout: float = 2.0) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(wake.sock, selectors.EVENT_READ)
        return bool(selector.select(timeout))


def test_a_wake_reaches_the_bound_socket_and_close_removes_it(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    wake_daemon(db)  # nobody listens: nothing happens
    wake = WakeSocket(db)
    try:
        wake_daemon(db)
        assert readable(wake)
        wake.drain()
        assert not readable(wake, 0.0)
    finally:
        wake.close()
    assert not wake_path(db).exists()


def test_a_cli_change_wakes_the_daemon(tmp_path: Path, invoke) -> None:
    (tmp_path / "stages.json").write_text(json.dumps({"optuna": {"storage": "sqlite:///o.db"}}))
    assert invoke("status").exit_code == 0  # creates the state DB
    wake = WakeSocket(tmp_path / "pipeline_v2.db")
    try:
        assert not readable(wake, 0.0)
        result = invoke("pause", "--all")
        assert result.exit_code == 0, result.output
        assert readable(wake)
    finally:
        wake.close()


class RecordingSelector:
    """Records the timeout the loop waits with, and reports no events."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def select(self, timeout: float) -> list:
        self.timeouts.append(timeout)
        return []


def test_an_idle_daemon_waits_for_what_is_due_not_a_short_timer(tmp_path: Path) -> None:
    (tmp_path / "stages.json").write_text(json.dumps({"optuna": {"storage": "sqlite:///o.db"}}))
    daemon = Daemon(tmp_path / "stages.json", mode="forever")
    now, mono = time.time(), daemon.monotonic()
    daemon.started = now
    daemon.selector = RecordingSelector()
    daemon.runner = SimpleNamespace(running=set(), is_ready=True)
    daemon.deployer = SimpleNamespace(next_due=lambda at, **_: None, next_check_due=lambda: None)
    daemon.store = SimpleNamespace(next_attempt_time=lambda: None)
    daemon.ops = SimpleNamespace(waiting=lambda mono, timeout: None)  # no HTTP, no loop lag
    daemon.next_discovery = daemon.next_health = mono + 3600
    daemon.next_control_check = mono + CONTROL_CHECK_S
    daemon._wait(now, daemon.monotonic())
    assert CONTROL_CHECK_S - 0.5 < daemon.selector.timeouts[-1] <= CONTROL_CHECK_S
    daemon.deployer.next_due = lambda at, **_: now + 0.5  # a restart due soon
    daemon._wait(now, daemon.monotonic())
    assert daemon.selector.timeouts[-1] <= 0.5
