"""The seam between the stage runner and whatever runs callable attempts (`daemon.executor`).

The runner hands an attempt to an executor and gets an outcome back; claims, deadlines,
retries and recording stay with the runner and the daemon, the same for every executor.
"""

from __future__ import annotations

import selectors
from collections.abc import Callable
from typing import Any, Protocol

from pipeline_v2.plan import Outcome


class Executor(Protocol):
    """Runs callable stage attempts somewhere and reports how each ended."""

    @property
    def is_ready(self) -> bool:
        """Attempts may be submitted now (a remote executor may be unreachable)."""

    @property
    def running(self) -> set[int]:
        """Stage ids with an attempt under way."""

    def submit(self, stage_id: int, task: dict[str, Any],
               timeout: float) -> tuple[int, float] | None:
        """Start one attempt; `timeout` is the worker side's backstop, the runner decides.
        Returns (pid, create time) of a local process group running it, else None."""

    def reap(self) -> list[tuple[int, Outcome]]:
        """Attempts that ended since the last call, each reported once."""

    def kill(self, stage_id: int) -> None:
        """Stop an attempt now; whatever it answers later is dropped."""

    def health(self) -> tuple[str, str] | None:
        """(status, message) for the `executor` health entry, or None when there is none."""

    def close(self) -> None:
        """Stop what runs and release everything."""


def answer_outcome(kind: str, rest: list[Any]) -> Outcome:
    """A worker's answer ("ok", metrics) | ("reject", why) | ("error" | "final", message, tb)."""
    if kind == "ok":
        return Outcome("ok", metrics=rest[0])
    if kind == "reject":
        return Outcome("reject", message=rest[0])
    if kind == "nospace":  # the attempt met a full disk: requeued uncharged
        return Outcome("requeue", message=rest[0])
    # "final": an error that retrying cannot heal (bad data, bad parameters).
    return Outcome("error", message=rest[0], traceback=rest[1] if len(rest) > 1 else None,
                   final=kind == "final")



def check_executor(spec: str) -> None:
    """Raise (one line naming the extra) if the executor's packages are missing."""
    if spec != "local":
        from pipeline_v2.stages.dask_executor import require_dask

        require_dask()


def make_executor(spec: str, selector: selectors.BaseSelector,
                  wake: Callable[[], None] = lambda: None) -> Executor:
    """The executor `daemon.executor` names: "local", or a Dask scheduler address."""
    if spec == "local":
        from pipeline_v2.stages.local import LocalExecutor

        return LocalExecutor(selector, wake)
    from pipeline_v2.stages.dask_executor import DaskExecutor

    return DaskExecutor(spec, selector, wake)
