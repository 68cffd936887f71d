"""The chaos harness: a real workspace (Optuna SQLite study, stages.json, state DB), the daemon
as a real subprocess that is SIGKILLed and restarted, a process-table sampler, status readers
and the bookkeeping of what was injected. Nothing is mocked: faults are real signals, real
files, real locks."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import psutil
from optuna.distributions import CategoricalDistribution, FloatDistribution

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TRADER = str(FIXTURES / "trader.py")
COMMAND = str(FIXTURES / "command.py")
GRANDCHILD = str(FIXTURES / "grandchild.py")
MARK_VAR = "PIPELINE_CHAOS_MARK"  # inherited by every process the daemon starts
FINAL = frozenset({"validated", "retired", "rejected", "failed", "cancelled"})
LIVE_DEPLOYMENT = ("starting", "running", "stopping", "backoff")


# -- the summary of a run (written to last_run.json by `make chaos`) ------------------------------

@dataclass
class Tally:
    """What the chaos suite injected and found, over every scenario of a session."""

    kills: int = 0
    aimed_kills: int = 0
    trader_faults: int = 0
    storage_faults: int = 0
    disk_faults: int = 0
    forged_rows: int = 0
    bad_state_dbs: int = 0
    hostile_inputs: int = 0
    status_reads: int = 0
    status_failures: int = 0
    trials: int = 0
    process_samples: int = 0
    duplicates: int = 0
    lost: int = 0
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The figures the README quotes."""
        faults = (self.kills + self.trader_faults + self.storage_faults + self.disk_faults
                  + self.forged_rows + self.bad_state_dbs)
        return {
            "kills_survived": self.kills, "aimed_kills": self.aimed_kills,
            "faults_injected": faults,
            "faults": {"daemon_sigkills": self.kills, "trader": self.trader_faults,
                       "optuna_storage": self.storage_faults, "disk_full": self.disk_faults,
                       "forged_deployment_rows": self.forged_rows,
                       "bad_state_dbs": self.bad_state_dbs},
            "hostile_inputs_tried": self.hostile_inputs,
            "status_reads": self.status_reads, "status_read_failures": self.status_failures,
            "trials": self.trials, "process_table_samples": self.process_samples,
            "duplicates": self.duplicates, "lost": self.lost, "scenarios": self.scenarios,
        }


TALLY = Tally()
_T0 = time.monotonic()


def note(what: str) -> None:
    """A timeline line on stderr (shown with `pytest -s`): where a scenario spends its time."""
    if os.environ.get("PIPELINE_CHAOS_VERBOSE"):
        print(f"[chaos {time.monotonic() - _T0:7.2f}s] {what}", file=sys.stderr, flush=True)


# -- the workspace --------------------------------------------------------------------------------

def stages_config(*, error_rate: float = 0.15, trader_mode: str = "{params[mode]}",
                  command_seconds: float = 0.0, extra_argv: Iterable[str] = ()) -> dict[str, Any]:
    """Three fast stages (callable, command, callable) with transient errors and rejecting
    gates, then a deploy stage running the chaos trader."""
    flaky = "tests.chaos.fixtures.stages:flaky"
    return {
        "screen": {"run": flaky, "max_attempts": 4, "timeout_seconds": 10,
                   "params": {"error_rate": error_rate}, "gates": {"score": ">= 0.15"}},
        "check": {"command": ["{python}", COMMAND, "{trial_id}", "check", str(error_rate),
                              "{params[x]}", str(command_seconds), *extra_argv],
                  "max_attempts": 4, "timeout_seconds": 10, "gates": {"score": ">= 0.25"}},
        "confirm": {"run": flaky, "max_attempts": 4, "timeout_seconds": 10,
                    "params": {"error_rate": error_rate}, "gates": {"score": ">= 0.6"}},
        "deploy": {"command": ["{python}", TRADER, "{run_dir}", "{trial_id}", trader_mode,
                               "{params[x]}"],
                   "max_deployments": 3, "rank_by": "screen.score", "min_improvement": 0.05,
                   "timeout_seconds": 5, "stop_grace_seconds": 0.3, "heartbeat_timeout": 1.0,
                   "restart": {"backoff": [0.05, 0.2], "max_crashes": 3, "window_seconds": 30},
                   "evaluate_after": "1h", "gates": {"sharpe": ">= 0.7"}},
    }


@dataclass
class Workspace:
    """One chaos workspace: where everything lives, and how to drive it."""

    root: Path
    config: Path
    optuna_path: Path
    state_db: Path
    logs: Path
    studies: list[str]
    mark: str
    trader_beats: int = 60
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The Optuna storage URL."""
        return f"sqlite:///{self.optuna_path}"

    def env(self) -> dict[str, str]:
        """The environment every process of this workspace starts with."""
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        return dict(os.environ, PYTHONPATH=path, PIPELINE_CHAOS_TRADER_BEATS=str(self.trader_beats),
                    **{MARK_VAR: self.mark})

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`python -m pipeline_v2 ARGS --config stages.json`, as a real process."""
        return subprocess.run(
            [sys.executable, "-m", "pipeline_v2", *args, "--config", str(self.config)],
            cwd=self.root, env=self.env(), capture_output=True, text=True, timeout=timeout,
        )

    def read(self) -> sqlite3.Connection:
        """A read-only connection to the state DB (the invariants never write)."""
        conn = sqlite3.connect(f"file:{self.state_db}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        return conn

    def optuna_numbers(self) -> set[tuple[str, int]]:
        """(study, number) of every COMPLETE trial in the Optuna storage."""
        conn = sqlite3.connect(f"file:{self.optuna_path}?mode=ro", uri=True, timeout=30)
        try:
            rows = conn.execute(
                "SELECT s.study_name, t.number FROM trials t JOIN studies s USING (study_id)"
                " WHERE t.state = 'COMPLETE'").fetchall()
        finally:
            conn.close()
        return {(name, number) for name, number in rows}


def add_trials(url: str, study_name: str, count: int, rng: random.Random,
               modes: Iterable[str] = ("finish",), attrs: dict[str, Any] | None = None,
               strings: dict[str, str] | None = None) -> None:
    """Append `count` COMPLETE trials in one go (params x, mode and any hostile strings)."""
    study = optuna.create_study(storage=url, study_name=study_name, load_if_exists=True)
    modes = list(modes)
    strings = strings or {}
    trials = []
    for _ in range(count):
        params: dict[str, Any] = {"x": round(rng.random(), 4), "mode": rng.choice(modes)}
        dists: dict[str, Any] = {"x": FloatDistribution(0.0, 1.0),
                                 "mode": CategoricalDistribution(modes)}
        for name, value in strings.items():
            params[name] = value
            dists[name] = CategoricalDistribution([value])
        trials.append(optuna.trial.create_trial(
            params=params, distributions=dists, value=params["x"],
            user_attrs={"tag": "ok", **(attrs or {})}))
    study.add_trials(trials)


def build_workspace(folder: Path, *, trials: int, studies: Iterable[str] = ("chaos",),
                    stages: dict[str, Any] | None = None, modes: Iterable[str] = ("finish",),
                    seed: int = 0, state_dir: Path | None = None, logs_dir: Path | None = None,
                    model_dir: str = "models/{study}/{number}", workers: int = 2,
                    trader_beats: int = 60, **extra: Any) -> Workspace:
    """A real Optuna SQLite study with `trials` COMPLETE trials per study and a stages.json with
    an accelerated config (0.05 s retries, 0.2 s discovery, 1 s heartbeat timeout)."""
    folder.mkdir(parents=True, exist_ok=True)
    optuna_path = folder / "optuna.db"
    url = f"sqlite:///{optuna_path}"
    rng = random.Random(seed)
    studies = list(studies)
    for name in studies:
        add_trials(url, name, trials, rng, modes)
    state_db = (state_dir or folder) / "state.db"
    logs = logs_dir or folder / "logs"
    raw = {
        "optuna": {"storage": url, "studies": studies, "model_dir": model_dir},
        "state_db": str(state_db), "logs_dir": str(logs),
        "daemon": {"check_interval": 0.2, "health_check_interval": 0.3, "workers": workers,
                   "http": None},
        "retry": {"delays": [0.05, 0.1]},
        "stages": stages or stages_config(),
        **extra,
    }
    config = folder / "stages.json"
    config.write_text(json.dumps(raw, indent=1))
    return Workspace(folder, config, optuna_path, state_db, logs, studies, uuid.uuid4().hex,
                     trader_beats)


# -- the daemon under fire --------------------------------------------------------------------

class DaemonUnderFire:
    """`pipeline run-daemon` as a real subprocess, killed and restarted at will."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self.unexpected_exits: list[int] = []
        self.out = ws.root / "daemon.out"

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """Start a daemon (the previous one must be gone)."""
        with self.out.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline_v2", "run-daemon", "--config",
                 str(self.ws.config), *args],
                cwd=self.ws.root, env=self.ws.env(), stdout=out, stderr=subprocess.STDOUT)
        self.ws.daemons.append(self.proc)
        return self.proc

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait until this daemon has reconciled (its heartbeat names its pid); False if it
        exited first."""
        proc = self.proc
        assert proc is not None
        sql = ("SELECT 1 FROM health WHERE component = 'daemon' AND status = 'running'"
               f" AND json_extract(details, '$.pid') = {proc.pid}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if wait_for_row(self.ws, sql, timeout=0.05, poll=0.02):
                return True
        return False

    def kill(self) -> bool:
        """SIGKILL the daemon (if it still runs) and reap it; False if it had already exited."""
        proc = self.proc
        if proc is None:
            return False
        if proc.poll() is not None:
            self.unexpected_exits.append(proc.returncode)
            self.proc = None
            return False
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.kills += 1
        TALLY.kills += 1
        self.proc = None
        return True

    def run(self, *args: str, timeout: float = 300) -> int:
        """Run a daemon to its end (e.g. `--until-idle`) and return its exit code."""
        proc = self.start(*args)
        try:
            return proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self.proc = None

    def terminate(self) -> None:
        """SIGTERM and wait (the clean stop)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def tail(self, chars: int = 3000) -> str:
        """The end of what the daemons printed."""
        return self.out.read_text(errors="replace")[-chars:] if self.out.exists() else ""

    def tracebacks(self) -> int:
        """How many raw tracebacks the daemons printed."""
        return self.out.read_text(errors="replace").count("Traceback (most recent call last)") \
            if self.out.exists() else 0


def aimed_kill(daemon: DaemonUnderFire, needle: str, timeout: float = 20.0) -> bool:
    """SIGKILL the daemon the moment it has a new child whose argv contains `needle` (the
    trader's shim or a command stage): the window between spawning and committing."""
    proc = daemon.proc
    assert proc is not None
    try:
        parent = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        return False
    seen = {c.pid for c in parent.children()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            children = parent.children()
        except psutil.NoSuchProcess:
            break
        for child in children:
            if child.pid in seen:
                continue
            seen.add(child.pid)
            with contextlib.suppress(psutil.Error):
                if any(needle in part for part in child.cmdline()):
                    daemon.kill()
                    TALLY.aimed_kills += 1
                    return True
        time.sleep(0.001)
    return False


def aimed_kill_on_row(daemon: DaemonUnderFire, table: str, timeout: float = 20.0) -> bool:
    """SIGKILL the daemon the moment the state DB shows a row it has just committed: a
    deployment `starting`, or a stage `running` (the claim is in; the process may not be)."""
    since = time.time()
    sql = {"deployment": "SELECT 1 FROM deployments WHERE status = 'starting'"
                         f" AND updated_at >= {since}",
           "stage": f"SELECT 1 FROM stages WHERE status = 'running' AND started_at >= {since}"}
    if daemon.proc is None or not wait_for_row(daemon.ws, sql[table], timeout):
        return False
    if daemon.kill():
        TALLY.aimed_kills += 1
        return True
    return False


def wait_for_row(ws: Workspace, sql: str, timeout: float = 20.0, poll: float = 0.002) -> bool:
    """Poll the state DB until `sql` returns a row (e.g. a deployment just `starting`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.Error):
            conn = ws.read()
            try:
                if conn.execute(sql).fetchone():
                    return True
            finally:
                conn.close()
        time.sleep(poll)
    return False


# -- the process table ------------------------------------------------------------------------

def _cmdline(proc: psutil.Process) -> list[str]:
    with contextlib.suppress(psutil.Error):
        return proc.cmdline()
    return []


class ProcessSampler(threading.Thread):
    """Samples the process table every ~50 ms: live chaos traders per trial (a trader is a
    process running TRADER whose parent is not itself a trader, so a fork between fork and
    exec is not counted) and command-stage processes per (trial, stage)."""

    def __init__(self, folder: Path, interval: float = 0.05) -> None:
        super().__init__(daemon=True, name="chaos-process-sampler")
        self.folder = str(folder)
        self.interval = interval
        self.samples = 0
        self.max_traders: Counter[str] = Counter()
        self.duplicates: list[dict[str, Any]] = []
        self.traders_seen: set[str] = set()
        self._halt = threading.Event()

    def sample(self) -> None:
        """One look at the process table."""
        traders: dict[str, list[int]] = {}
        commands: dict[tuple[str, str], list[int]] = {}
        for proc in psutil.process_iter(["ppid", "cmdline", "status"]):
            cmd = proc.info["cmdline"] or []
            if len(cmd) < 4 or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if cmd[1] == TRADER and cmd[2].startswith(self.folder):
                with contextlib.suppress(psutil.Error):
                    parent = _cmdline(psutil.Process(proc.info["ppid"]))
                    if len(parent) > 1 and parent[1] == TRADER:
                        continue
                traders.setdefault(cmd[3], []).append(proc.pid)
            elif cmd[1] == COMMAND:
                with contextlib.suppress(psutil.Error):
                    if proc.cwd().startswith(self.folder):
                        commands.setdefault((cmd[2], cmd[3]), []).append(proc.pid)
        self.samples += 1
        for key, pids in traders.items():
            self.traders_seen.add(key)
            self.max_traders[key] = max(self.max_traders[key], len(pids))
            if len(pids) > 1:
                self.duplicates.append({"trader": key, "pids": pids})
        for key, pids in commands.items():
            if len(pids) > 1:
                self.duplicates.append({"command": list(key), "pids": pids})

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            with contextlib.suppress(psutil.Error, OSError):
                self.sample()

    def stop(self) -> None:
        """Stop sampling and add the figures to the tally."""
        self._halt.set()
        self.join(timeout=5)
        TALLY.process_samples += self.samples
        TALLY.duplicates += len(self.duplicates)


class StatusReaders:
    """N threads calling `pipeline status --json` in a loop while the faults go on."""

    def __init__(self, ws: Workspace, count: int = 4, pause: float = 0.3) -> None:
        self.ws = ws
        self.pause = pause
        self.reads = 0
        self.failures: list[str] = []
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._read, daemon=True) for _ in range(count)]

    def __enter__(self) -> StatusReaders:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        for thread in self.threads:
            thread.join(timeout=90)
        TALLY.status_reads += self.reads
        TALLY.status_failures += len(self.failures)

    def _read(self) -> None:
        while not self._halt.is_set():
            try:
                result = self.ws.cli("status", "--json")
                problem = None
                if result.returncode != 0 or "Traceback" in result.stderr:
                    problem = f"exit {result.returncode}: {result.stderr.strip()[-300:]}"
                else:
                    json.loads(result.stdout)
            except (subprocess.TimeoutExpired, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.reads += 1
                if problem:
                    self.failures.append(problem)
            self._halt.wait(self.pause)


# -- processes we own, and bystanders we must never touch -------------------------------------

def marked_processes(mark: str) -> list[psutil.Process]:
    """Every live process carrying this workspace's marker in its environment."""
    found = []
    for proc in psutil.process_iter(["status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(MARK_VAR) == mark:
                found.append(proc)
    return found


def kill_marked(mark: str) -> None:
    """Teardown: nothing of a scenario outlives it, whatever it asserted."""
    for proc in marked_processes(mark):
        with contextlib.suppress(psutil.Error):
            proc.kill()


def tear_down(ws: Workspace) -> None:
    """Kill and reap every daemon a scenario started (a failed assertion leaves them), then
    everything else carrying its marker."""
    for proc in ws.daemons:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    kill_marked(ws.mark)


@contextlib.contextmanager
def bystanders(count: int = 2) -> Iterator[list[psutil.Process]]:
    """Unrelated `sleep` processes (own session, no marker): nothing may signal them."""
    procs = [psutil.Popen(["sleep", "900"], start_new_session=True) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def run_until_idle(daemon: DaemonUnderFire, timeout: float = 300) -> int:
    """The final clean run: `run-daemon --until-idle` (a bounded wait)."""
    return daemon.run("--until-idle", "--timeout", str(int(timeout)), timeout=timeout + 30)


def sleep_random(rng: random.Random, low: float, high: float) -> None:
    """A random moment (the kill points are random; the suite waits, it never asserts time)."""
    time.sleep(rng.uniform(low, high))
