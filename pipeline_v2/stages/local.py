"""The local executor: callable stages in worker processes on this host (the default).

Each worker leads its own process group; the daemon's selector watches every worker pipe and
sentinel, so a result or a crash wakes the loop at once. Killing an attempt kills its worker's
whole group (and a fresh worker is spawned for the next one).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import selectors
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from pipeline_v2.plan import Outcome
from pipeline_v2.processes import describe_exit, signal_group
from pipeline_v2.stages.executors import answer_outcome
from pipeline_v2.stages.worker import worker_main

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["pipeline_v2.stages.worker"])


@dataclass
class _Worker:
    process: Any
    conn: Any
    stage_id: int | None = None
    created: float = 0.0  # with the pid, who this worker is (it leads its own group)


class LocalExecutor:
    """Worker processes on this host, spawned on demand and reused."""

    def __init__(self, selector: selectors.BaseSelector,
                 wake: Callable[[], None] = lambda: None) -> None:
        self.selector = selector
        self.wake = wake
        self._workers: list[_Worker] = []

    @property
    def is_ready(self) -> bool:
        """Always: local processes need no connection."""
        return True

    def health(self) -> tuple[str, str] | None:
        """Nothing to report: local workers have no health entry of their own."""
        return None

    def _spawn(self) -> _Worker:
        parent, child = _context.Pipe()
        process = _context.Process(target=worker_main, args=(child, os.getpid()), daemon=True,
                                   name="pipeline-stage-worker")
        process.start()
        child.close()
        worker = _Worker(process, parent)
        try:
            worker.created = psutil.Process(process.pid).create_time()
        except psutil.NoSuchProcess:
            worker.created = 0.0  # died at once: reaped as such on the next turn
        self.selector.register(parent, selectors.EVENT_READ, self.wake)
        self.selector.register(process.sentinel, selectors.EVENT_READ, self.wake)
        self._workers.append(worker)
        return worker

    def _retire(self, worker: _Worker, kill: bool) -> None:
        for fileobj in (worker.conn, worker.process.sentinel):
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fileobj)
        if kill and worker.process.pid:
            signal_group(worker.process.pid, signal.SIGKILL)
        else:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            signal_group(worker.process.pid, signal.SIGKILL)
            worker.process.join()
        worker.conn.close()
        self._workers.remove(worker)

    def submit(self, stage_id: int, task: dict[str, Any], timeout: float) -> tuple[int, float]:
        """Hand a callable stage to an idle worker (spawning one if needed).

        Returns the worker's (pid, create time): the group to kill if this daemon dies."""
        worker = next((w for w in self._workers if w.stage_id is None), None)
        if worker is None:
            worker = self._spawn()
        worker.stage_id = stage_id
        worker.conn.send(task)
        return int(worker.process.pid or 0), worker.created

    @property
    def running(self) -> set[int]:
        """Stage ids with an attempt in a worker."""
        return {w.stage_id for w in self._workers if w.stage_id is not None}

    def reap(self) -> list[tuple[int, Outcome]]:
        """Answers from workers, and attempts whose worker died."""
        done: list[tuple[int, Outcome]] = []
        for worker in list(self._workers):
            if worker.stage_id is None:
                if not worker.process.is_alive():
                    self._retire(worker, kill=True)
                continue
            stage_id = worker.stage_id
            if worker.conn.poll():
                try:
                    kind, *rest = worker.conn.recv()
                except (EOFError, OSError):
                    kind, rest = "died", []
                if kind != "died":
                    worker.stage_id = None
                    done.append((stage_id, answer_outcome(kind, rest)))
                    continue
            if not worker.process.is_alive():
                worker.process.join()
                self._retire(worker, kill=True)
                reason = describe_exit(worker.process.exitcode or 0)
                done.append((stage_id, Outcome("error", message=f"worker died ({reason})")))
        return done

    def kill(self, stage_id: int) -> None:
        """Kill the attempt's worker and its whole group; its answer is never read."""
        for worker in list(self._workers):
            if worker.stage_id == stage_id:
                self._retire(worker, kill=True)

    def close(self) -> None:
        """Kill what runs and let idle workers exit."""
        for worker in list(self._workers):
            self._retire(worker, kill=worker.stage_id is not None)

