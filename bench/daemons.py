"""Measure a real `pipeline run-daemon` supervising N traders, and supervisord beside it.

Idle CPU and RSS of the supervising process, unique memory (USS) per exit-code shim, and crash
detection: a trader is SIGKILLed and the state DB is polled for the daemon's crash event, whose
timestamp is the daemon's clock at the turn that recorded it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil

from bench.common import BIN, ROOT

SLEEPER = ["sleep", "infinity"]


@dataclass
class Supervised:
    """What one supervising run measured."""

    cpu_percent: float
    rss_mb: float
    rss_end_mb: float
    uss_per_child_mb: list[float] = field(default_factory=list)
    detect_s: list[float] = field(default_factory=list)


def _cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of all the process's threads, to the nanosecond (/proc/PID/task/*/schedstat):
    psutil's cpu_times count 10 ms clock ticks, which cannot tell 0.05 % from 0.1 % in 10 s."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{proc.pid}/task"):
            with open(f"/proc/{proc.pid}/task/{task}/schedstat") as fh:
                total += int(fh.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):  # no schedstat here: clock ticks will do
        times = proc.cpu_times()
        return times.user + times.system


def _cpu_over(proc: psutil.Process, seconds: float) -> float:
    before = _cpu_seconds(proc)
    time.sleep(seconds)
    return 100 * (_cpu_seconds(proc) - before) / seconds


def _live_children(proc: psutil.Process, marker: str) -> list[psutil.Process]:
    found = []
    for child in proc.children():
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE and marker in " ".join(child.cmdline()):
                found.append(child)
    return found


def _wait_children(proc: psutil.Process, n: int, timeout: float,
                   marker: str = "") -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        children = _live_children(proc, marker)
        if len(children) >= n or time.monotonic() > deadline:
            return children
        time.sleep(0.1)


def run_daemon(config: Path, state: Path, traders: int, idle_s: float, kills: int) -> Supervised:
    """Start the daemon, wait for its traders, measure idle, then kill traders one by one."""
    daemon = subprocess.Popen([str(BIN / "pipeline"), "run-daemon", "-c", str(config)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = psutil.Process(daemon.pid)
    shims: list[psutil.Process] = []
    try:
        _wait_ready(state, daemon.pid)
        shims = _wait_children(proc, traders, 180, "shim.py")
        if len(shims) < traders:
            raise RuntimeError(f"the daemon started {len(shims)} of {traders} traders")
        time.sleep(3)  # start-up settles: first heartbeat checks, notes, promotion
        rss = proc.memory_info().rss / 2**20
        cpu = _cpu_over(proc, idle_s)
        result = Supervised(cpu, rss, proc.memory_info().rss / 2**20)
        result.uss_per_child_mb = [s.memory_full_info().uss / 2**20 for s in shims]
        result.detect_s = _crash_latencies(state, shims[:kills])
        return result
    finally:
        with contextlib.suppress(psutil.Error):
            shims += _live_children(proc, "shim.py")  # traders outlive the daemon
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        # Also a trader restarted after the last look (a crash's backoff ending during the
        # SIGTERM): one left running would be re-adopted by the next case's daemon.
        workspace = str(config.parent)
        for found in psutil.process_iter(["cmdline"]):
            cmdline = found.info["cmdline"] or []
            if any("shim.py" in part for part in cmdline[:4]) and any(
                    part.startswith(workspace) for part in cmdline[4:6]):
                shims.append(found)
        for shim in shims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(shim.pid, signal.SIGKILL)


def _wait_ready(state: Path, pid: int, timeout: float = 300) -> None:
    """Until the daemon has written its first heartbeat (it runs its loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.Error), sqlite3.connect(state, timeout=30) as conn:
            row = conn.execute("SELECT status, message FROM health WHERE component = 'daemon'"
                               ).fetchone()
            if row and row[0] == "running" and f"pid {pid}," in row[1]:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the daemon (pid {pid}) wrote no heartbeat within {timeout:g} s")


def _crash_latencies(state: Path, shims: list[psutil.Process]) -> list[float]:
    conn = sqlite3.connect(state, timeout=30)
    latencies = []
    try:
        for shim in shims:
            trader = shim.children()[0]
            last = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            killed = time.time()
            trader.kill()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                row = conn.execute("SELECT ts FROM events WHERE id > ? AND kind ="
                                   " 'deployment.crashed' LIMIT 1", [last]).fetchone()
                if row:
                    latencies.append(max(0.0, row[0] - killed))
                    break
                time.sleep(0.005)
            else:
                raise RuntimeError("the daemon recorded no crash within 30 s")
            time.sleep(0.1)
    finally:
        conn.close()
    return latencies


def run_supervisord(work: Path, programs: int, idle_s: float, kills: int) -> Supervised:
    """supervisord with the same programs: idle CPU and RSS, and crash detection from its log."""
    binary = shutil.which("supervisord", path=str(Path(sys.executable).parent))
    if binary is None:
        raise RuntimeError("supervisord is not installed (pip install -e '.[bench]')")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    conf, log = work / "supervisord.conf", work / "supervisord.log"
    sections = "".join(
        f"\n[program:p{i}]\ncommand={' '.join(SLEEPER)}\nautorestart=true\nstartsecs=0\n"
        "startretries=100\nstdout_logfile=NONE\nstderr_logfile=NONE\n" for i in range(programs))
    conf.write_text(f"[supervisord]\nlogfile={log}\nloglevel=info\npidfile={work}/s.pid\n"
                    f"nodaemon=true\n{sections}")
    sup = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    proc = psutil.Process(sup.pid)
    try:
        _wait_children(proc, programs, 60, "sleep")
        time.sleep(3)
        rss = proc.memory_info().rss / 2**20
        cpu = _cpu_over(proc, idle_s)
        result = Supervised(cpu, rss, proc.memory_info().rss / 2**20)
        victims = []
        for child in proc.children()[:kills]:
            name = _program_of(child.pid, log)
            killed = time.time()
            child.kill()
            victims.append((name, killed))
            time.sleep(0.1)
        time.sleep(2.5)
        result.detect_s = _from_log(log, victims)
        return result
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=60)


def _program_of(pid: int, log: Path) -> str:
    for line in reversed(log.read_text().splitlines()):
        match = re.search(rf"spawned: '(\w+)' with pid {pid}\b", line)
        if match:
            return match.group(1)
    raise RuntimeError(f"pid {pid} not in supervisord's log")


def _stamp(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _from_log(log: Path, kills: list[tuple[str, float]]) -> list[float]:
    lines = log.read_text().splitlines()
    return [max(0.0, next(_stamp(line) for line in lines
                          if f"exited: {name} " in line and _stamp(line) >= killed - 0.002)
                - killed) for name, killed in kills]
