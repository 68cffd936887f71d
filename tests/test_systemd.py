"""The systemd unit (checked by systemd-analyze where it exists) and sd_notify on a real socket."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from pipeline_v2.daemon import Daemon
from tests.engine_helpers import FIX, workspace

ANALYZE = shutil.which("systemd-analyze")


def unit_text(invoke, path: Path, *flags: str) -> str:
    result = invoke("systemd-unit", "--config", str(path), *flags)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("flags", [(), ("--user",)])
def test_unit_has_what_the_daemon_needs(tmp_path: Path, invoke, flags) -> None:
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok"}})
    text = unit_text(invoke, path, *flags)
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=60", "Restart=on-failure",
                 "KillMode=process", "OOMPolicy=continue", "ExecReload=/bin/kill -HUP $MAINPID",
                 f"EnvironmentFile=-{tmp_path / 'pipeline.env'}",
                 f"WorkingDirectory={tmp_path}", "NoNewPrivileges=yes"):
        assert line in text.splitlines(), line
    assert f"-m pipeline_v2 run-daemon --config {path}" in text
    assert "TimeoutStopSec=25" in text  # above the 5 s shutdown grace (no deploy stage here)
    assert "# Stop only the daemon: paper traders run in their own sessions" in text
    if flags:
        assert "ProtectSystem" not in text and "WantedBy=default.target" in text
    else:
        assert "ProtectSystem=strict" in text and f"ReadWritePaths={tmp_path}" in text
        assert f"User={pwd.getpwuid(tmp_path.stat().st_uid).pw_name}" in text.splitlines()
        assert "PrivateTmp" not in text  # the workspace is under /tmp here


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed on this machine")
@pytest.mark.parametrize("flags", [(), ("--user",)])
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, invoke, flags) -> None:
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok"}})
    (tmp_path / "logs").mkdir()
    unit = tmp_path / "pipeline-v2.service"
    unit.write_text(unit_text(invoke, path, *flags))
    runtime = tmp_path / "run"  # a user manager needs a runtime dir, even to verify
    runtime.mkdir()
    result = subprocess.run([ANALYZE, *(["--user"] if flags else []), "verify", str(unit)],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, XDG_RUNTIME_DIR=str(runtime)))
    assert (result.returncode, result.stderr) == (0, "")


def test_install_user_unit_prints_enable_commands(tmp_path: Path, invoke, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok"}})
    result = invoke("systemd-unit", "--user", "--install", "--config", str(path))
    assert result.exit_code == 0, result.output
    written = tmp_path / "xdg" / "systemd" / "user" / "pipeline-v2.service"
    assert result.stdout == (f"wrote {written}; enable it with:\n"
                             "  systemctl --user daemon-reload\n"
                             "  systemctl --user enable --now pipeline-v2.service\n")
    assert written.read_text() == unit_text(invoke, path, "--user")


def test_daemon_notifies_ready_watchdog_status_reloading_stopping(
        tmp_path: Path, monkeypatch) -> None:
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok"}}, trials=2,
                     daemon={"check_interval": 0.1, "health_check_interval": 0.1, "http": None})
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    messages: list[str] = []
    stopping: list[bool] = []

    def listen() -> None:
        try:
            while True:
                message = sock.recv(4096).decode()
                messages.append(message)
                readies = messages.count("READY=1")
                if message == "READY=1" and readies == 1:
                    os.kill(os.getpid(), signal.SIGHUP)  # reload once ready
                elif message == "WATCHDOG=1" and readies == 2 and not stopping:
                    stopping.append(True)  # reloaded and pinging: now stop
                    os.kill(os.getpid(), signal.SIGTERM)
                if message == "STOPPING=1":
                    return
        except OSError:
            return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        Daemon(path, mode="forever", timeout=20).run()
    finally:
        thread.join(5)
        sock.close()
    assert [m for m in messages if not m.startswith("STATUS=")][0] == "READY=1"
    reloading = next(i for i, m in enumerate(messages) if m.startswith("RELOADING=1\n"))
    assert messages[reloading].split("\n")[1].startswith("MONOTONIC_USEC=")
    assert "READY=1" in messages[reloading + 1:]
    assert "WATCHDOG=1" in messages
    status = [m for m in messages if m.startswith("STATUS=")]
    assert status and status[0].endswith("attempt(s) running")
    assert " pending, " in status[0]
    assert messages[-1] == "STOPPING=1"
