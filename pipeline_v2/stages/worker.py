"""The worker process that runs callable stages, so user code can never take the daemon down.

A worker leads its own process group (so a timeout kills everything the stage spawned), takes
one task at a time over a pipe, and answers ("ok", metrics) | ("reject", reason) |
("error", message, traceback tail).
"""

from __future__ import annotations

import json
import math
import os
import signal
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO

import structlog

from pipeline_v2.errors import Reject
from pipeline_v2.stages.context import StageContext
from pipeline_v2.stages.runner import import_callable

TRACEBACK_TAIL = 4000


def _json_safe(metrics: Any) -> dict[str, Any]:
    """Metrics must be a JSON object; non-finite floats survive as floats."""
    if not isinstance(metrics, dict):
        raise TypeError(f"a stage must return a dict of metrics, got {type(metrics).__name__}")
    json.dumps(metrics, allow_nan=True)
    return {
        str(k): (float(v) if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in metrics.items()
    }


def _stage_logger(handle: TextIO, bound: dict[str, Any]) -> Any:
    """A structlog logger writing JSON lines to the trial's stage log."""
    return structlog.wrap_logger(
        structlog.PrintLogger(handle),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
    ).bind(**bound)


def run_task(task: dict[str, Any]) -> tuple[Any, ...]:
    """Run one stage callable; never raises."""
    try:
        fn = import_callable(task["target"])
        fields = dict(task["context"])
        fields["model_dir"] = Path(fields["model_dir"])
        fields["run_dir"] = Path(fields["run_dir"])
        fields["config_dir"] = Path(fields.get("config_dir", "."))
        fields["run_dir"].mkdir(parents=True, exist_ok=True)
        bound = {"trial": f"{fields['study']}:{fields['number']}", "stage": fields["stage"],
                 "attempt": fields["attempt"]}
        log_path = Path(task["log_path"])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a", encoding="utf-8", buffering=1) as handle:
            fields["log"] = _stage_logger(handle, bound)
            return ("ok", _json_safe(fn(StageContext(**fields))))
    except Reject as exc:
        return ("reject", exc.reason)
    except BaseException as exc:  # user code: anything at all is an error to retry
        message = f"{type(exc).__name__}: {exc}".strip()
        return ("error", message, traceback.format_exc()[-TRACEBACK_TAIL:])


def worker_main(conn: Connection) -> None:
    """Serve tasks until the pipe closes."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send(run_task(task))
