"""Process groups: signal one, stop one with a grace, and say how a process ended.

Shared by the stage runner (attempts), the supervisor (traders) and the CLI's `stop`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

import psutil

POLL_S = 0.05
CLAIM_ENV = "PIPELINE_CLAIM"  # every process of an attempt inherits it: found even after setsid


def describe_exit(code: int) -> str:
    """`exit code 3` or `killed by SIGSEGV`."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it is already gone (which is success, not an error)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
        return True
    return False


def terminate_group(pgid: int, grace: float,
                    is_ours: Callable[[], bool] = lambda: True) -> None:
    """SIGTERM the group, wait up to `grace` for its leader, then SIGKILL what is left.

    `is_ours` is asked before each signal: a recycled pid must never be signalled.
    """
    if is_ours():
        signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        with contextlib.suppress(psutil.NoSuchProcess):
            leader = psutil.Process(pgid)
            # Short waits, asking `is_ours` between them: a zombie nobody reaps never "exits"
            # for psutil, but it is done for us.
            while is_ours() and (left := deadline - time.monotonic()) > 0:
                _, alive = psutil.wait_procs([leader], timeout=min(left, POLL_S))
                if not alive:
                    break
    if is_ours():
        signal_group(pgid, signal.SIGKILL)


def kill_tagged(token: str, since: float) -> list[int]:
    """SIGKILL every process of ours created since `since` whose environment carries this
    attempt's claim token (children that left the group with setsid included)."""
    killed = []
    me = os.getpid()
    for proc in psutil.process_iter(["create_time"]):
        try:
            created = proc.info["create_time"]
            if proc.pid == me or created is None or created < since - 1:
                continue
            if proc.environ().get(CLAIM_ENV) == token:
                proc.kill()
                killed.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return killed


def exited(pid: int) -> bool:
    """True once the process has exited; it is not reaped, so its pid (and group) stay ours."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
