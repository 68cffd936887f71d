"""What a Dask worker runs for one attempt: the stage in a child process group it can stop.

`run_stage_task` is the function the daemon submits. It starts `python -m
pipeline_v2.stages.remote RESULT_FILE` in a new session, hands it the task on stdin, and waits.
It kills the child's whole process group when the attempt's `timeout` passes, or when the
future is cancelled (by the daemon: a timeout, `pipeline cancel`; or by the scheduler, because
the daemon's client went away). The child kills its own group if its worker dies, so nothing a
stage started outlives the worker that ran it. Importing this module needs no Dask.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pipeline_v2.processes import describe_exit, signal_group

START_TOPIC = "pipeline-v2-attempt-started"
POLL_S = 0.05  # how soon a cancelled or timed-out attempt's processes are killed
ORPHAN_CHECK_S = 0.2
WORKER_SLACK_S = 1.0


def _is_cancelled(worker: Any, key: Any) -> bool:
    """The scheduler no longer wants this task (cancelled, or its client is gone)."""
    state = worker.state.tasks.get(key)
    return state is None or state.state in ("cancelled", "released", "forgotten")


def run_stage_task(task: dict[str, Any]) -> tuple[Any, ...]:
    """Run one stage attempt on this worker; the same answers as a local worker process."""
    worker = key = None
    try:
        from distributed import get_worker

        worker = get_worker()
        key = worker.get_current_task()
        # The daemon counts starts per attempt: a second start means Dask re-ran the attempt
        # after losing a worker, which the daemon turns into an error to retry as it decides.
        worker.log_event(START_TOPIC, {"key": key, "worker": worker.address})
    except (ImportError, ValueError):
        pass  # not on a Dask worker (called directly): no cancellation to watch
    timeout = float(task.get("timeout", 0)) or None
    # The child imports what this worker can import (the stage's module included).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
               PIPELINE_DASK_WORKER=str(getattr(worker, "address", "")))
    with tempfile.TemporaryDirectory(prefix="pipeline-v2-") as tmp:
        result_file = Path(tmp) / "result.pickle"
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline_v2.stages.remote", str(result_file), str(os.getpid())],
            stdin=subprocess.PIPE, start_new_session=True, env=env)
        assert proc.stdin is not None
        with proc.stdin:
            proc.stdin.write(pickle.dumps(task))
        # The daemon's deadline decides; this one is the backstop when the daemon is gone.
        deadline = None if timeout is None else time.monotonic() + timeout + WORKER_SLACK_S
        while True:
            try:
                code = proc.wait(POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                _stop(proc)
                return ("error", f"timed out after {timeout:g}s on the worker "
                                 "(process group killed)")
            if worker is not None and _is_cancelled(worker, key):
                _stop(proc)
                return ("error", "cancelled (process group killed)")
        if code == 0 and result_file.exists():
            return tuple(pickle.loads(result_file.read_bytes()))
        return ("error", f"stage process {describe_exit(code)} on the worker")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _exit_with_parent(parent: int) -> None:
    """Kill this whole group once the worker that started it is gone."""
    try:
        fd = os.pidfd_open(parent)
        select.select([fd], [], [])  # readable when the worker has exited
    except OSError:  # no pidfds here: notice the reparenting instead
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_S)
    os.killpg(0, signal.SIGKILL)


def main(argv: list[str]) -> int:
    """Child side: read the task, run it as a local worker would, write the answer."""
    from pipeline_v2.stages.worker import run_task

    result_file, parent = Path(argv[0]), int(argv[1])
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:
        os.killpg(0, signal.SIGKILL)
    task = pickle.loads(sys.stdin.buffer.read())
    answer = run_task(task)
    partial = result_file.with_suffix(".part")
    partial.write_bytes(pickle.dumps(answer))
    partial.replace(result_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
