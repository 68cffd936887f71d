"""Callable stage attempts on a Dask cluster (`daemon.executor = "tcp://host:8786"`).

The executor only carries attempts: the stage runner keeps deadlines, the daemon keeps claims,
retries and recording. It never blocks the loop: the client connects in a background thread
with a short timeout and again after a pause while the scheduler is unreachable; a finished
future writes to a socketpair the daemon's selector watches. Each attempt is a future keyed by
(stage id, attempt number, a nonce), so a result can only ever answer the attempt that asked.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline_v2.errors import PipelineError
from pipeline_v2.plan import Outcome
from pipeline_v2.stages.executors import answer_outcome
from pipeline_v2.stages.remote import START_TOPIC, run_stage_task

CONNECT_TIMEOUT_S = 3.0
RECONNECT_AFTER_S = 2.0
LOST = "lost: the Dask scheduler or worker running it went away"


class ExecutorUnavailable(PipelineError):
    """The executor's extra is not installed."""


def require_dask() -> None:
    """Raise one line naming the extra when distributed is missing."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ExecutorUnavailable(
            "daemon.executor: a Dask scheduler address needs Dask: "
            "pip install 'pipeline_v2[dask]'"
        ) from None


@dataclass
class _Attempt:
    stage_id: int
    attempt: int
    key: str
    future: Any


class DaskExecutor:
    """Submits callable stages to a Dask scheduler; see the module docstring."""

    def __init__(self, address: str, selector: selectors.BaseSelector,
                 wake: Callable[[], None] = lambda: None,
                 connect_timeout: float = CONNECT_TIMEOUT_S,
                 reconnect_after: float = RECONNECT_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        require_dask()
        self.address = address
        self.selector = selector
        self.wake = wake
        self.connect_timeout = connect_timeout
        self.reconnect_after = reconnect_after
        self.clock = clock
        self._client: Any = None
        self._connecting: threading.Thread | None = None
        self._next_connect = 0.0
        self.error: str | None = None
        self._attempts: dict[int, _Attempt] = {}
        self._starts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._done: list[str] = []
        self._ready_r, self._ready_w = socket.socketpair()
        for sock in (self._ready_r, self._ready_w):
            sock.setblocking(False)
        selector.register(self._ready_r, selectors.EVENT_READ, self._drain)

    # -- connection -----------------------------------------------------------------------------

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._ready_r.recv(512):
                pass
        self.wake()

    def _signal(self) -> None:
        """Wake the daemon's selector (from the client's threads)."""
        with contextlib.suppress(OSError):
            self._ready_w.send(b"x")

    def _connect(self) -> None:
        from distributed import Client

        try:
            client = Client(self.address, timeout=self.connect_timeout, set_as_default=False)
            client.subscribe_topic(START_TOPIC, self._on_start)
        except Exception as exc:  # any failure to connect is the same to us: retry later
            self.error = f"cannot reach the Dask scheduler at {self.address}: {_line(exc)}"
        else:
            self._client, self.error = client, None
        self._signal()

    def _on_start(self, event: tuple[float, dict[str, Any]]) -> None:
        key = str(event[1].get("key"))
        with self._lock:
            self._starts[key] = self._starts.get(key, 0) + 1
            if self._starts[key] > 1:  # re-run after its worker died: answer now, as an error
                self._done.append(key)
        self._signal()

    def poll(self) -> None:
        """Start a connection attempt when there is no client and none is under way."""
        if self._client is not None and self._client.status != "running":
            self._drop_client()
        if self._client is None and self._connecting is None and self.clock() >= self._next_connect:
            self._connecting = threading.Thread(target=self._connect, daemon=True,
                                                name="pipeline-dask-connect")
            self._connecting.start()
        if self._connecting is not None and not self._connecting.is_alive():
            self._connecting = None
            if self._client is None:
                self._next_connect = self.clock() + self.reconnect_after

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self.error = f"lost the Dask scheduler at {self.address}"
        self._next_connect = self.clock() + self.reconnect_after
        with self._lock:
            self._done.extend(a.key for a in self._attempts.values())
        # Closing waits on the network: never in the loop's thread.
        threading.Thread(target=_close_quietly, args=(client,), daemon=True).start()

    @property
    def is_ready(self) -> bool:
        """Connected: attempts may be submitted."""
        self.poll()
        return self._client is not None

    def health(self) -> tuple[str, str]:
        """(status, message) for the `executor` health entry."""
        if self._client is not None:
            return "ok", f"Dask scheduler {self.address}: {len(self._attempts)} attempt(s) running"
        if self.error is None:
            return "connecting", f"connecting to the Dask scheduler at {self.address}"
        return "error", self.error

    # -- attempts -------------------------------------------------------------------------------

    @property
    def running(self) -> set[int]:
        """Stage ids with an attempt on the cluster."""
        return set(self._attempts)

    def submit(self, stage_id: int, task: dict[str, Any], timeout: float) -> None:
        """Send one attempt to the cluster; its outcome comes back through `reap`. No local
        process runs it (None): if this daemon dies, the scheduler drops the task with our
        client and the worker kills the attempt's process group."""
        if self._client is None:
            raise OSError(self.error or f"not connected to the Dask scheduler at {self.address}")
        attempt = int(task["context"]["attempt"])
        key = f"pipeline-v2-stage-{stage_id}-attempt-{attempt}-{uuid.uuid4().hex[:8]}"
        future = self._client.submit(run_stage_task, task | {"timeout": timeout}, key=key,
                                     pure=False, retries=0)
        self._attempts[stage_id] = _Attempt(stage_id, attempt, key, future)
        future.add_done_callback(lambda _f: self._finished(key))

    def _finished(self, key: str) -> None:
        with self._lock:
            self._done.append(key)
        self._signal()

    def reap(self) -> list[tuple[int, Outcome]]:
        """Outcomes of the attempts whose futures finished (or were lost)."""
        self.poll()
        with self._lock:
            keys, self._done = set(self._done), []
            starts = dict(self._starts)
        by_key = {a.key: a for a in self._attempts.values()}
        done: list[tuple[int, Outcome]] = []
        for key in keys:
            attempt = by_key.get(key)
            if attempt is None:
                continue  # killed or timed out already: a late answer is dropped here
            del self._attempts[attempt.stage_id]
            with self._lock:
                self._starts.pop(key, None)
            done.append((attempt.stage_id, self._outcome(attempt, starts.get(key, 0))))
        return done

    def _outcome(self, attempt: _Attempt, starts: int) -> Outcome:
        future = attempt.future
        if starts > 1:
            self._cancel(future)
            return Outcome("error", message="worker lost mid-attempt (Dask re-ran it elsewhere; "
                                            "not counted: retried as an error)")
        status = future.status
        if status == "finished":
            try:
                answer = future.result(timeout=self.connect_timeout)
            except Exception as exc:  # the client lost the data between done and fetch
                return Outcome("error", message=f"{LOST} ({_line(exc)})")
            kind, *rest = answer
            return answer_outcome(kind, rest)
        if status == "error":
            exc = future.exception(timeout=self.connect_timeout)
            return Outcome("error", message=f"Dask: {type(exc).__name__}: {_line(exc)}")
        return Outcome("error", message=LOST)

    def _cancel(self, future: Any) -> None:
        # Releasing our only reference makes the scheduler forget the task, so its worker
        # marks it cancelled and kills the process group; unlike cancel(), it never blocks.
        with contextlib.suppress(Exception):
            future.release()

    def kill(self, stage_id: int) -> None:
        """Cancel an attempt; the worker kills its process group, and its answer is dropped."""
        attempt = self._attempts.pop(stage_id, None)
        if attempt is not None:
            self._cancel(attempt.future)
            with self._lock:
                self._starts.pop(attempt.key, None)

    def close(self) -> None:
        """Cancel what runs and disconnect."""
        for stage_id in list(self._attempts):
            self.kill(stage_id)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self._ready_r)
        if self._client is not None:
            _close_quietly(self._client)
            self._client = None
        self._ready_r.close()
        self._ready_w.close()


def _close_quietly(client: Any) -> None:
    with contextlib.suppress(Exception):
        client.close(timeout=CONNECT_TIMEOUT_S)


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
