"""100 supervised processes: crash-detection latency, crash-to-new-process time (outside any
backoff), and the supervisor's idle CPU and memory — beside supervisord in the same run.

Ours is measured at the component the daemon uses (Supervisor: pidfds in a selector, the shim
that records exit codes) for the latencies, and as a real `pipeline run-daemon` supervising 100
deployments for idle CPU and memory. supervisord runs the same 100 programs; its latencies come
from its own millisecond log timestamps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil

from bench.common import CACHE, ROOT, report

N = int(os.environ.get("BENCH_SUPERVISED", "100"))
KILLS = int(os.environ.get("BENCH_KILLS", "100"))
IDLE_S = float(os.environ.get("BENCH_IDLE_SECONDS", "10"))
SLEEPER = [sys.executable, "-c",
           "import itertools, time; [time.sleep(3600) for _ in itertools.count()]"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def trader_of(shim_pid: int) -> int:
    """The trader a shim started (its only child)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = psutil.Process(shim_pid).children()
        if children:
            return children[0].pid
        time.sleep(0.005)
    raise RuntimeError(f"shim {shim_pid} started no trader")


def ours_latencies(work: Path) -> tuple[list[float], list[float]]:
    from pipeline_v2.supervisor import Supervisor

    selector = selectors.DefaultSelector()
    sup = Supervisor(selector)
    ids = {}
    for i in range(N):
        ids[i] = sup.spawn(i, SLEEPER, work / f"p{i}")
    detect, respawn = [], []
    try:
        for k in range(KILLS):
            i = k % N
            trader = trader_of(ids[i].pid)
            time.sleep(0.1)  # the previous respawn finishes starting (as between supervisord's)
            killed = time.perf_counter()
            os.kill(trader, signal.SIGKILL)
            found = []
            while not found:
                for key, _ in selector.select(1.0):
                    key.data()
                found = [d for d, _ in sup.exited() if d == i]
            noticed = time.perf_counter()
            ids[i] = sup.spawn(i, SLEEPER, work / f"p{i}")
            detect.append(noticed - killed)
            respawn.append(time.perf_counter() - noticed)
    finally:
        for identity in ids.values():
            os.killpg(identity.pid, signal.SIGKILL)
        for identity in ids.values():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(identity.pid, 0)
    return detect, respawn


def ours_idle(work: Path) -> tuple[float, float, float]:
    """CPU % and RSS (MB) of a real daemon supervising N idle deployments; shims' total RSS."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=f"sqlite:///{work / 'optuna.db'}", study_name="idle")
    for i in range(N):
        trial = study.ask()
        study.tell(trial, float(i))
    (work / "stages.json").write_text(json.dumps({
        "optuna": {"storage": "sqlite:///optuna.db", "studies": ["idle"]},
        "stages": {"deploy": {"command": SLEEPER, "max_deployments": N, "rank_by": "value",
                              "heartbeat_timeout": 3600, "evaluate_after": "30d"}},
    }))
    daemon = subprocess.Popen([sys.executable, "-m", "pipeline_v2", "run-daemon", "--config",
                               str(work / "stages.json")], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = psutil.Process(daemon.pid)
    try:
        deadline = time.monotonic() + 120
        while len(_shims(work)) < N and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # let start-up settle
        before = proc.cpu_times()
        time.sleep(IDLE_S)
        after = proc.cpu_times()
        cpu = 100 * ((after.user + after.system) - (before.user + before.system)) / IDLE_S
        rss = proc.memory_info().rss / 2**20
        # Unique memory: the shims share libpython's pages, which RSS would count N times.
        shims = sum(p.memory_full_info().uss for p in _shims(work)) / 2**20
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        subprocess.run([sys.executable, "-m", "pipeline_v2", "stop", "--all", "--config",
                        str(work / "stages.json")], cwd=ROOT, capture_output=True)
    return cpu, rss, shims


def _shims(work: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "shim.py" in cmd and str(work) in cmd:
            found.append(p)
    return found


def supervisord_run(work: Path) -> tuple[list[float], list[float], float, float]:
    binary = shutil.which("supervisord", path=str(Path(sys.executable).parent))
    if binary is None:
        raise RuntimeError("supervisord is not installed (pip install supervisor)")
    conf = work / "supervisord.conf"
    log = work / "supervisord.log"
    programs = "".join(
        f"\n[program:p{i}]\ncommand={' '.join(SLEEPER[:2])} \"{SLEEPER[2]}\"\n"
        "autorestart=true\nstartsecs=0\nstartretries=100\nstdout_logfile=NONE\n"
        "stderr_logfile=NONE\n"
        for i in range(N)
    )
    conf.write_text(f"[supervisord]\nlogfile={log}\nloglevel=info\npidfile={work}/s.pid\n"
                    f"nodaemon=true\n{programs}")
    sup = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    proc = psutil.Process(sup.pid)
    try:
        deadline = time.monotonic() + 60
        while len(proc.children()) < N and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)
        before = proc.cpu_times()
        time.sleep(IDLE_S)
        after = proc.cpu_times()
        cpu = 100 * ((after.user + after.system) - (before.user + before.system)) / IDLE_S
        rss = proc.memory_info().rss / 2**20
        kills = []
        for k in range(KILLS):
            children = proc.children()
            victim = children[k % len(children)]
            name = _program_of(victim.pid, log)
            killed = time.time()
            victim.kill()
            kills.append((name, killed))
            time.sleep(0.1)
        time.sleep(2.5)
        detect, respawn = _from_log(log, kills)
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=60)
    return detect, respawn, cpu, rss


def _program_of(pid: int, log: Path) -> str:
    for line in reversed(log.read_text().splitlines()):
        match = re.search(rf"spawned: '(\w+)' with pid {pid}\b", line)
        if match:
            return match.group(1)
    raise RuntimeError(f"pid {pid} not in supervisord's log")


def _stamp(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _from_log(log: Path, kills: list[tuple[str, float]]) -> tuple[list[float], list[float]]:
    lines = log.read_text().splitlines()
    detect, respawn = [], []
    for name, killed in kills:
        exited = next(_stamp(line) for line in lines
                      if f"exited: {name} " in line and _stamp(line) >= killed - 0.002)
        spawned = next(_stamp(line) for line in lines
                       if f"spawned: '{name}'" in line and _stamp(line) >= exited)
        detect.append(max(0.0, exited - killed))
        respawn.append(spawned - exited)
    return detect, respawn


def main() -> None:
    work = CACHE / "supervisor_run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    detect, respawn = ours_latencies(work / "latency")
    cpu, rss, shims = ours_idle(work / "idle")
    (work / "supervisord").mkdir()
    s_detect, s_respawn, s_cpu, s_rss = supervisord_run(work / "supervisord")
    ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
    report(
        "supervisor",
        [
            (f"crash detection p50 ({KILLS} kills, {N} processes)", ms(pct(detect, 50)),
             ms(pct(s_detect, 50)), "supervisord"),
            ("crash detection p99", ms(pct(detect, 99)), ms(pct(s_detect, 99)),
             "target <= 50 ms"),
            ("crash -> new process p50", ms(pct(respawn, 50)), ms(pct(s_respawn, 50)),
             "outside backoff"),
            ("crash -> new process p99", ms(pct(respawn, 99)), ms(pct(s_respawn, 99)),
             "target <= 250 ms"),
            (f"idle CPU over {IDLE_S:g} s", f"{cpu:.2f} %", f"{s_cpu:.2f} %",
             "the supervising process"),
            ("supervisor RSS", f"{rss:.0f} MB", f"{s_rss:.0f} MB",
             f"plus {shims:.0f} MB unique (USS) in {N} exit-code shims"),
        ],
        {"processes": N, "kills": KILLS},
    )


if __name__ == "__main__":
    main()
