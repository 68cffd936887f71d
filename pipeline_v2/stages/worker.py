"""The worker process that runs callable stages, so user code can never take the daemon down.

A worker leads its own process group (so a timeout kills everything the stage spawned), takes
one task at a time over a pipe, and answers ("ok", metrics) | ("reject", reason) |
("error", message, traceback tail).
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO

import psutil
import structlog

from pipeline_v2.backtest.errors import EngineError
from pipeline_v2.errors import Reject, UsageError
from pipeline_v2.stages.context import StageContext
from pipeline_v2.stages.imports import import_callable

TRACEBACK_TAIL = 4000
PR_SET_PDEATHSIG = 1
PARENT_CHECK_S = 0.2


def _json_safe(metrics: Any) -> dict[str, Any]:
    """Metrics must be a JSON object; non-finite floats survive as floats."""
    if not isinstance(metrics, dict):
        raise TypeError(f"a stage must return a dict of metrics, got {type(metrics).__name__}")
    json.dumps(metrics, allow_nan=True)
    return {
        str(k): (float(v) if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in metrics.items()
    }


class LazyFile:
    """A text file opened (and its folder made) on the first write: an attempt that logs
    nothing leaves no empty log file and no folder behind."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: TextIO | None = None

    def write(self, text: str) -> int:
        """Append, opening the file first if needed."""
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.path.open("a", encoding="utf-8", buffering=1)
        return self.handle.write(text)

    def flush(self) -> None:
        """Flush if open."""
        if self.handle is not None:
            self.handle.flush()

    def close(self) -> None:
        """Close if open."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _stage_logger(handle: Any, bound: dict[str, Any]) -> Any:
    """A structlog logger writing JSON lines to the trial's stage log."""
    return structlog.wrap_logger(
        structlog.PrintLogger(handle),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
    ).bind(**bound)


def enter_config_dir(config_dir: str | None) -> None:
    """The config's folder is every stage's working directory and on its import path, so a
    stage module beside stages.json imports and its relative paths mean the same everywhere."""
    if not config_dir:
        return
    os.chdir(config_dir)
    if config_dir not in sys.path:
        sys.path.insert(0, config_dir)


def run_task(task: dict[str, Any]) -> tuple[Any, ...]:
    """Run one stage callable; never raises."""
    try:
        enter_config_dir(task["context"].get("config_dir"))
        fn = import_callable(task["target"])
        fields = task["context"]
        bound = {"trial": f"{fields['study']}:{fields['number']}", "stage": fields["stage"],
                 "attempt": fields["attempt"]}
        # The run folder is made when the stage first asks for ctx.run_dir, the log file on
        # its first line: a stage that needs neither costs no filesystem work.
        handle = LazyFile(Path(task["log_path"]))
        try:
            ctx = StageContext.from_fields(fields, _stage_logger(handle, bound))
            return ("ok", _json_safe(fn(ctx)))
        finally:
            handle.close()
    except Reject as exc:
        return ("reject", exc.reason)
    except (UsageError, EngineError) as exc:  # bad data, bad parameters: retrying cannot heal
        return ("final", str(exc), traceback.format_exc()[-TRACEBACK_TAIL:])
    except BaseException as exc:  # user code: anything at all is an error to retry
        message = f"{type(exc).__name__}: {exc}".strip()
        if _is_no_space(exc):  # the disk, not the trial: requeued without charging it
            return ("nospace", message)
        return ("error", message, traceback.format_exc()[-TRACEBACK_TAIL:])


def _is_no_space(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception's chain."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _end_group(*_args: object) -> None:
    """The daemon is gone: end this worker and everything its stage started, at once."""
    os.killpg(0, signal.SIGKILL)


def die_with_parent(daemon_pid: int | None = None) -> None:
    """Never outlive the daemon. Our parent is the forkserver, which each worker keeps alive
    (it holds the forkserver's liveness pipe), so a thread checks the daemon itself; the kernel
    also signals us if the forkserver dies (PDEATHSIG). The signal handler waits for the main
    thread's next bytecode; the thread does not."""
    parent = os.getppid()
    daemon = _process(daemon_pid)
    signal.signal(signal.SIGUSR1, _end_group)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGUSR1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the thread below still does it

    def watch() -> None:
        while True:
            if os.getppid() != parent or (daemon is not None and not daemon.is_running()):
                _end_group()
            time.sleep(PARENT_CHECK_S)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _process(pid: int | None) -> psutil.Process | None:
    """The process with this pid (psutil checks its identity on every is_running())."""
    if pid is None:
        return None
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        _end_group()
        return None


def worker_main(conn: Connection, daemon_pid: int | None = None) -> None:
    """Serve tasks until the pipe closes; die with the daemon (`daemon_pid`)."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(daemon_pid)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send(run_task(task))
