"""Run stage attempts without blocking: callables through an executor, commands as subprocesses.

Callables go to the configured executor (`stages/executors.py`: local worker processes, or a
Dask cluster); commands always run here. The daemon's selector watches every worker pipe and
sentinel, command pidfd and executor wakeup, so a result, a crash or an exit wakes the loop at
once; `reap` then turns what finished into `Outcome`s. The runner keeps every deadline: an
attempt past `timeout_seconds` is killed (its whole process group, wherever it runs).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from pipeline_v2.plan import Outcome
from pipeline_v2.processes import CLAIM_ENV, describe_exit, exited, kill_tagged, signal_group
from pipeline_v2.stages.executors import Executor
from pipeline_v2.stages.local import LocalExecutor

STDERR_TAIL = 2000
NO_SPACE = "No space left on device"


@dataclass
class _Deadline:
    at: float
    timeout: float


@dataclass
class _Command:
    stage_id: int
    proc: subprocess.Popen[bytes]
    deadline: float
    timeout: float
    result_file: Path
    log_path: Path
    token: str = ""
    started: float = 0.0
    offsets: tuple[int, int] = (0, 0)
    pidfd: int | None = None
    log_handles: list[Any] = field(default_factory=list)


class StageRunner:
    """Owns the executor for callable stages and the running stage commands."""

    def __init__(self, workers: int, selector: selectors.BaseSelector,
                 wake: Callable[[], None] = lambda: None,
                 executor: Executor | None = None, executor_spec: str = "local") -> None:
        self.size = workers
        self.selector = selector
        self.wake = wake
        self.executor_spec = executor_spec
        self.executor: Executor = executor or LocalExecutor(selector, wake)
        self._deadlines: dict[int, _Deadline] = {}
        self._commands: dict[int, _Command] = {}

    # -- callables ------------------------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        """Whether attempts may start (a remote executor may be unreachable for now)."""
        return self.executor.is_ready

    def start_callable(self, stage_id: int, task: dict[str, Any], timeout: float,
                       now: float) -> tuple[int, float] | None:
        """Hand a callable stage to the executor; the deadline stays here.

        Returns the local process group to kill if this daemon dies, as (pid, create time),
        or None when the attempt runs elsewhere (a Dask worker ends it when we disconnect)."""
        where = self.executor.submit(stage_id, task, timeout)
        self._deadlines[stage_id] = _Deadline(now + timeout, timeout)
        return where

    # -- commands -------------------------------------------------------------------------------

    def start_command(self, stage_id: int, argv: list[str], env: dict[str, str], cwd: Path,
                      log_path: Path, result_file: Path, timeout: float,
                      now: float) -> tuple[int, float]:
        """Start a command stage in its own session; stdout/stderr go to the stage log.

        Returns its (pid, create time): the group to kill if this daemon dies."""
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
                           token=env.get(CLAIM_ENV, ""), offsets=offsets, log_handles=[out, err])
        try:
            command.started = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:  # already gone: the group sweep finds nothing either
            command.started = 0.0
        try:
            command.pidfd = os.pidfd_open(proc.pid)
            self.selector.register(command.pidfd, selectors.EVENT_READ, self.wake)
        except OSError:
            command.pidfd = None  # no pidfd here: the loop's 1 s cap polls instead
        self._commands[stage_id] = command
        return proc.pid, command.started

    def _end_group(self, command: _Command) -> None:
        """Kill what the command left behind, then reap it. The leader is still unreaped here,
        so its pid cannot have been recycled and the group is ours to signal."""
        signal_group(command.proc.pid, signal.SIGKILL)
        if command.token and command.started:
            kill_tagged(command.token, command.started)
        command.proc.wait()

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
            if NO_SPACE in tail:
                return Outcome("requeue", message=f"{describe_exit(code)}: {last}")
            return Outcome("error", message=f"{describe_exit(code)}: {last}".rstrip(": "),
                           traceback=tail or None)
        return _read_metrics(command.result_file, _read_from(command.log_path, out_offset))

    # -- both -----------------------------------------------------------------------------------

    @property
    def running(self) -> set[int]:
        """Stage ids with an attempt under way."""
        return self.executor.running | set(self._commands)

    def reap(self, now: float) -> list[tuple[int, Outcome]]:
        """Collect every attempt that finished, crashed or timed out."""
        done = self.executor.reap()
        for stage_id, _ in done:
            self._deadlines.pop(stage_id, None)
        for stage_id in self.executor.running:
            deadline = self._deadlines.get(stage_id)
            if deadline is not None and now >= deadline.at:
                self.executor.kill(stage_id)
                del self._deadlines[stage_id]
                done.append((stage_id, _timed_out(deadline.timeout)))
        for command in list(self._commands.values()):
            if exited(command.proc.pid):
                self._end_group(command)  # leftovers never outlive a finished stage
                done.append((command.stage_id, self._finish_command(command)))
            elif now >= command.deadline:
                self._end_group(command)
                self._finish_command(command)
                done.append((command.stage_id, _timed_out(command.timeout)))
        return done

    def kill(self, stage_id: int) -> None:
        """Stop one attempt now (cancelled, or a cold shutdown); its result is discarded."""
        if stage_id in self.executor.running:
            self.executor.kill(stage_id)
        self._deadlines.pop(stage_id, None)
        command = self._commands.get(stage_id)
        if command is not None:
            self._end_group(command)
            self._finish_command(command)

    def close(self) -> None:
        """Kill what runs and let idle workers exit."""
        for stage_id in list(self.running):
            self.kill(stage_id)
        self.executor.close()


def _timed_out(seconds: float) -> Outcome:
    return Outcome("error", message=f"timed out after {seconds:g}s (process group killed)")


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
