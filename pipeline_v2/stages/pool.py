"""Run stage attempts without blocking: callables in worker processes, commands as subprocesses.

The daemon's selector watches every worker pipe, worker sentinel and command pidfd, so a result,
a crash or an exit wakes the loop at once; `reap` then turns what finished into `Outcome`s.
Timeouts kill the attempt's whole process group.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import selectors
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_v2.plan import Outcome
from pipeline_v2.stages.worker import worker_main

STDERR_TAIL = 2000
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["pipeline_v2.stages.worker"])


def describe_exit(code: int) -> str:
    """`exit code 3` or `killed by SIGSEGV`."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a process group; a group that is already gone is success."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@dataclass
class _Worker:
    process: Any
    conn: Any
    stage_id: int | None = None
    deadline: float = 0.0
    timeout: float = 0.0


@dataclass
class _Command:
    stage_id: int
    proc: subprocess.Popen[bytes]
    deadline: float
    timeout: float
    result_file: Path
    log_path: Path
    offsets: tuple[int, int] = (0, 0)
    pidfd: int | None = None
    log_handles: list[Any] = field(default_factory=list)


class StageRunner:
    """Owns the worker processes and running stage commands."""

    def __init__(self, workers: int, selector: selectors.BaseSelector,
                 wake: Callable[[], None] = lambda: None) -> None:
        self.size = workers
        self.selector = selector
        self.wake = wake
        self._workers: list[_Worker] = []
        self._commands: dict[int, _Command] = {}

    # -- callables ------------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        parent, child = _context.Pipe()
        process = _context.Process(target=worker_main, args=(child,), daemon=True,
                                   name="pipeline-stage-worker")
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self.selector.register(parent, selectors.EVENT_READ, self.wake)
        self.selector.register(process.sentinel, selectors.EVENT_READ, self.wake)
        self._workers.append(worker)
        return worker

    def _retire(self, worker: _Worker, kill: bool) -> None:
        for fileobj in (worker.conn, worker.process.sentinel):
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fileobj)
        if kill and worker.process.pid:
            kill_group(worker.process.pid)
        else:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            kill_group(worker.process.pid)
            worker.process.join()
        worker.conn.close()
        self._workers.remove(worker)

    def start_callable(self, stage_id: int, task: dict[str, Any], timeout: float,
                       now: float) -> None:
        """Hand a callable stage to an idle worker (spawning one if needed)."""
        worker = next((w for w in self._workers if w.stage_id is None), None)
        if worker is None:
            worker = self._spawn()
        worker.stage_id, worker.deadline, worker.timeout = stage_id, now + timeout, timeout
        worker.conn.send(task)

    # -- commands -------------------------------------------------------------------------------

    def start_command(self, stage_id: int, argv: list[str], env: dict[str, str], cwd: Path,
                      log_path: Path, result_file: Path, timeout: float, now: float) -> None:
        """Start a command stage in its own session; stdout/stderr go to the stage log."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        result_file.unlink(missing_ok=True)
        out = log_path.open("ab")
        err = _stderr_path(log_path).open("ab")
        offsets = (out.tell(), err.tell())
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
        except OSError as exc:
            out.close()
            err.close()
            raise OSError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
        command = _Command(stage_id, proc, now + timeout, timeout, result_file, log_path,
                           offsets=offsets, log_handles=[out, err])
        try:
            command.pidfd = os.pidfd_open(proc.pid)
            self.selector.register(command.pidfd, selectors.EVENT_READ, self.wake)
        except OSError:
            command.pidfd = None  # no pidfd here: the loop's 1 s cap polls instead
        self._commands[stage_id] = command

    def _finish_command(self, command: _Command) -> Outcome:
        for handle in command.log_handles:
            handle.close()
        if command.pidfd is not None:
            self.selector.unregister(command.pidfd)
            os.close(command.pidfd)
        del self._commands[command.stage_id]
        code = command.proc.returncode
        out_offset, err_offset = command.offsets
        tail = _read_from(_stderr_path(command.log_path), err_offset)[-STDERR_TAIL:]
        if code != 0:
            last = tail.strip().splitlines()[-1] if tail.strip() else ""
            return Outcome("error", message=f"{describe_exit(code)}: {last}".rstrip(": "),
                           traceback=tail or None)
        return _read_metrics(command.result_file, _read_from(command.log_path, out_offset))

    # -- both -----------------------------------------------------------------------------------

    @property
    def running(self) -> set[int]:
        """Stage ids with an attempt under way."""
        busy = {w.stage_id for w in self._workers if w.stage_id is not None}
        return busy | set(self._commands)

    def reap(self, now: float) -> list[tuple[int, Outcome]]:
        """Collect every attempt that finished, crashed or timed out."""
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
                    done.append((stage_id, _outcome(kind, rest)))
                    continue
            if not worker.process.is_alive():
                worker.process.join()
                self._retire(worker, kill=True)
                reason = describe_exit(worker.process.exitcode or 0)
                done.append((stage_id, Outcome("error", message=f"worker died ({reason})")))
            elif now >= worker.deadline:
                self._retire(worker, kill=True)
                done.append((stage_id, _timed_out(worker.timeout)))
        for command in list(self._commands.values()):
            if command.proc.poll() is not None:
                done.append((command.stage_id, self._finish_command(command)))
            elif now >= command.deadline:
                kill_group(command.proc.pid)
                command.proc.wait()
                self._finish_command(command)
                done.append((command.stage_id, _timed_out(command.timeout)))
        return done

    def kill(self, stage_id: int) -> None:
        """Stop one attempt now (cancelled, or a cold shutdown); its result is discarded."""
        for worker in list(self._workers):
            if worker.stage_id == stage_id:
                self._retire(worker, kill=True)
        command = self._commands.get(stage_id)
        if command is not None:
            kill_group(command.proc.pid)
            command.proc.wait()
            self._finish_command(command)

    def close(self) -> None:
        """Kill what runs and let idle workers exit."""
        for stage_id in list(self.running):
            self.kill(stage_id)
        for worker in list(self._workers):
            self._retire(worker, kill=False)


def _timed_out(seconds: float) -> Outcome:
    return Outcome("error", message=f"timed out after {seconds:g}s (process group killed)")


def _outcome(kind: str, rest: list[Any]) -> Outcome:
    if kind == "ok":
        return Outcome("ok", metrics=rest[0])
    if kind == "reject":
        return Outcome("reject", message=rest[0])
    return Outcome("error", message=rest[0], traceback=rest[1] if len(rest) > 1 else None)


def _stderr_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.stem + ".stderr.log")


def _read_from(path: Path, offset: int) -> str:
    """What this attempt appended to a log (earlier attempts' output comes before)."""
    if not path.exists():
        return ""
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def _read_metrics(result_file: Path, stdout: str) -> Outcome:
    """A command's metrics: PIPELINE_RESULT_FILE, else the last stdout line."""
    source = "PIPELINE_RESULT_FILE"
    text = result_file.read_text(errors="replace").strip() if result_file.exists() else ""
    if not text:
        source = "the last line of stdout"
        lines = stdout.strip().splitlines()
        text = lines[-1] if lines else ""
    if not text:
        return Outcome("error", message="exited 0 but wrote no metrics "
                       "(write JSON to $PIPELINE_RESULT_FILE or as the last stdout line)")
    try:
        metrics = json.loads(text)
    except json.JSONDecodeError:
        return Outcome("error", message=f"exited 0 but {source} is not JSON: {text[:200]!r} "
                       "(write a JSON object to $PIPELINE_RESULT_FILE or as the last stdout line)")
    if not isinstance(metrics, dict):
        return Outcome("error",
                       message=f"metrics in {source} must be a JSON object, got {text[:200]!r}")
    return Outcome("ok", metrics=metrics)
