"""Process supervision: spawn a trader in its own session, know it only by (pid, create time,
boot id), watch its exit through a pidfd, stop its whole process group, re-adopt it later.

Each trader runs under `shim.py`, which records its exit code in `run_dir/exit_code`,
so a daemon that restarted (and so is not the parent) still learns how a trader ended, and
which holds `run_dir/shim.lock` while its trader lives: a second trader for one run dir cannot
start, and the lock names the live shim to a daemon that lost track of it.

Nothing is signalled on a recorded pid alone: a process is ours only if its (pid, create time,
boot id) match and it is the shim of that very run dir (`is_ours`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from pipeline_v2 import processes

EXIT_FILE = "exit_code"
LOG_FILE = "paper.log"
HEARTBEAT_FILE = "heartbeat"
METRICS_FILE = "metrics.json"
LOG_MAX_BYTES = 50 * 2**20
LOG_BACKUPS = 5
CREATE_TIME_TOLERANCE_S = 0.05
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
SHIM = str(Path(__file__).with_name("shim.py"))
LOCK_FILE = "shim.lock"
SHIM_BUSY = 75  # shim.BUSY_EXIT: another shim holds the run dir's lock; nothing was started


def boot_id() -> str:
    """This boot's id: a pid from before a reboot is never the same process."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return f"boot@{psutil.boot_time():.0f}"


@dataclass(frozen=True)
class Identity:
    """Who a supervised process is. A pid alone is not an identity: pids are recycled."""

    pid: int
    create_time: float
    boot_id: str


def identify(pid: int) -> Identity:
    """The identity of a running process."""
    return Identity(pid, psutil.Process(pid).create_time(), boot_id())


def is_alive(identity: Identity) -> bool:
    """True only if this very process (not a recycled pid) still runs and is not a zombie."""
    if identity.boot_id != boot_id():
        return False
    try:
        proc = psutil.Process(identity.pid)
        if abs(proc.create_time() - identity.create_time) > CREATE_TIME_TOLERANCE_S:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def signal_group(identity: Identity, sig: int) -> bool:
    """Signal the process group this process leads — only after checking its identity."""
    return is_alive(identity) and processes.signal_group(identity.pid, sig)


def is_ours(identity: Identity, run_dir: Path) -> bool:
    """True only for a live shim we started for this run dir: identity, then its command line
    (a forged or stale row may name a live process with a matching create time)."""
    if not is_alive(identity):
        return False
    try:
        cmdline = psutil.Process(identity.pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return SHIM in cmdline[:4] and str(run_dir / EXIT_FILE) in cmdline[:6]


def signal_trader(identity: Identity, run_dir: Path, sig: int) -> bool:
    """Signal a trader's process group, only if its shim is ours (the shim ignores stop signals;
    the trader handles them)."""
    return is_ours(identity, run_dir) and signal_group(identity, sig)


def kill_trader(identity: Identity, run_dir: Path, shim_too: bool = False) -> bool:
    """SIGKILL every descendant of our shim, wherever its session or group; the shim then reaps
    them and exits with the trader's status. `shim_too`: the last resort, the shim as well."""
    if not is_ours(identity, run_dir):
        return False
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        for proc in psutil.Process(identity.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.kill()
    if shim_too:
        signal_group(identity, signal.SIGKILL)
    return True


def lock_holder(run_dir: Path) -> int | None:
    """The pid written in the run dir's shim lock if a process holds that lock, else None.

    The probe holds a shared lock for microseconds; a shim starting at that instant waits."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def shim_for(recorded: Identity | None, run_dir: Path) -> Identity | None:
    """A deployment's live shim: the recorded one if still ours, else the run dir's lock holder
    (a daemon may have died between the spawn and recording it)."""
    if recorded is not None and is_ours(recorded, run_dir):
        return recorded
    return find_shim(run_dir)


def find_shim(run_dir: Path) -> Identity | None:
    """The live shim that holds this run dir's lock, if it is ours."""
    pid = lock_holder(run_dir)
    if not pid:
        return None
    try:
        identity = identify(pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return identity if is_ours(identity, run_dir) else None


@dataclass
class Watched:
    """A supervised process being watched for its exit."""

    deployment_id: int
    identity: Identity
    run_dir: Path
    is_child: bool = False  # we are the parent: we reap it and get its status
    status: int | None = None
    pidfd: int | None = None


class Supervisor:
    """Starts and watches trader processes; the daemon's selector wakes on their exits."""

    def __init__(self, selector: selectors.BaseSelector | None = None,
                 wake: Callable[[], None] = lambda: None) -> None:
        self.selector = selector
        self.wake = wake
        self.watched: dict[int, Watched] = {}

    def spawn(self, deployment_id: int, argv: list[str], run_dir: Path,
              env: dict[str, str] | None = None, log_max_bytes: int = LOG_MAX_BYTES,
              log_backups: int = LOG_BACKUPS, cwd: Path | None = None) -> Identity:
        """Start `argv` (no shell) under the shim, in a new session, in `cwd` (the shim
        enters it), logging to paper.log (rotated by the shim at `log_max_bytes`, keeping
        `log_backups` old files)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        # -I -S and a file path rather than -m: the shim imports nothing of ours or of site,
        # so each costs the least memory a Python can.
        command = [sys.executable, "-I", "-S", SHIM, str(run_dir / EXIT_FILE),
                   str(run_dir / LOG_FILE), str(int(log_max_bytes)), str(int(log_backups)),
                   "--", *argv]
        log = os.open(run_dir / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            # posix_spawn rather than Popen: the process must outlive this daemon, and there
            # is no Popen object to warn about that when the daemon exits.
            pid = os.posix_spawn(
                command[0], command,
                dict(env or os.environ, PIPELINE_RUN_DIR=str(run_dir),
                     PIPELINE_SHIM_CWD=str(cwd or os.getcwd())),
                file_actions=[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, log, 1),
                              (os.POSIX_SPAWN_DUP2, log, 2)],
                setsid=True,
            )
        finally:
            os.close(log)
            os.close(null)
        identity = identify(pid)
        self._watch(Watched(deployment_id, identity, run_dir, is_child=True))
        return identity

    def adopt(self, deployment_id: int, identity: Identity, run_dir: Path) -> bool:
        """Watch a shim started by an earlier daemon, if it is still that shim of that run dir."""
        if not is_ours(identity, run_dir):
            return False
        self._watch(Watched(deployment_id, identity, run_dir))
        return True

    def _watch(self, watched: Watched) -> None:
        try:
            watched.pidfd = os.pidfd_open(watched.identity.pid)
            if self.selector is not None:
                self.selector.register(watched.pidfd, selectors.EVENT_READ, self.wake)
        except (OSError, AttributeError):
            watched.pidfd = None  # no pidfd: exits are found by the loop's regular check
        self.watched[watched.deployment_id] = watched

    def exited(self) -> list[tuple[int, int | None]]:
        """Deployments whose process ended since the last call, with its exit code if known."""
        done = []
        for deployment_id, watched in list(self.watched.items()):
            if watched.is_child:
                try:
                    pid, status = os.waitpid(watched.identity.pid, os.WNOHANG)
                except ChildProcessError:  # reaped elsewhere: only its exit file can tell
                    pid, status = watched.identity.pid, None
                if pid == 0:
                    continue
                watched.status = None if status is None else os.waitstatus_to_exitcode(status)
                if watched.status == SHIM_BUSY:  # its exit file belongs to the other shim
                    self._forget(watched)
                    done.append((deployment_id, SHIM_BUSY))
                    continue
            elif is_alive(watched.identity):
                continue
            done.append((deployment_id, self._forget(watched)))
        return done

    def _forget(self, watched: Watched) -> int | None:
        if watched.pidfd is not None:
            if self.selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(watched.pidfd)
            os.close(watched.pidfd)
        self.watched.pop(watched.deployment_id, None)
        return read_exit_code(watched.run_dir, watched.status)

    def release(self, deployment_id: int) -> None:
        """Stop watching without touching the process (the daemon is leaving it running)."""
        watched = self.watched.get(deployment_id)
        if watched is not None:
            if watched.is_child:  # reap it if it has ended, so no zombie lingers
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(watched.identity.pid, os.WNOHANG)
            if watched.pidfd is not None:
                if self.selector is not None:
                    with contextlib.suppress(KeyError, ValueError):
                        self.selector.unregister(watched.pidfd)
                os.close(watched.pidfd)
            self.watched.pop(deployment_id, None)

    def close(self) -> None:
        """Stop watching everything; the processes keep running for the next daemon."""
        for deployment_id in list(self.watched):
            self.release(deployment_id)


def read_exit_code(run_dir: Path, shim_status: int | None = None) -> int | None:
    """The trader's exit code as the shim recorded it (else the shim's own, if our child)."""
    with contextlib.suppress(OSError, ValueError):
        return int((run_dir / EXIT_FILE).read_text().strip())
    return shim_status


def heartbeat_age(run_dir: Path | str, now: float) -> float | None:
    """Seconds since the trader last touched its heartbeat file, or None if it never did.
    (A str run dir is the cheap path the deployer's periodic check takes: no Path objects.)"""
    try:
        return now - os.stat(os.path.join(run_dir, HEARTBEAT_FILE)).st_mtime
    except OSError:
        return None

