"""Chaos fixtures: a workspace per scenario whose processes never outlive it, and the session's
summary (written to $PIPELINE_CHAOS_SUMMARY, which `make chaos` points at last_run.json)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import TALLY, Workspace, build_workspace, tear_down

SUMMARY_VAR = "PIPELINE_CHAOS_SUMMARY"
_started = time.monotonic()


@pytest.fixture
def make_workspace(tmp_path: Path) -> Iterator[Callable[..., Workspace]]:
    """Build chaos workspaces; every process they started is killed at teardown."""
    made: list[Workspace] = []

    def make(name: str = "ws", **kwargs: Any) -> Workspace:
        ws = build_workspace(tmp_path / name, **kwargs)
        made.append(ws)
        return ws

    yield make
    for ws in made:
        tear_down(ws)


COUNTED = ("kills", "aimed_kills", "duplicates", "lost")
_before: dict[str, int] = {}


def pytest_runtest_setup(item: pytest.Item) -> None:
    _before.update({name: getattr(TALLY, name) for name in COUNTED})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        verdict = report.outcome
        if hasattr(report, "wasxfail"):
            verdict = "xpass" if report.passed else "xfail"
        found = {name: getattr(TALLY, name) - _before.get(name, 0) for name in COUNTED}
        TALLY.scenarios[item.name] = {"verdict": verdict,
                                      **{k: v for k, v in found.items() if v}}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get(SUMMARY_VAR)
    if not target or not TALLY.scenarios:
        return
    data = {"duration_seconds": round(time.monotonic() - _started), **TALLY.as_json()}
    Path(target).write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
