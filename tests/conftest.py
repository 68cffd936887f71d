"""Shared fixtures: a workspace folder with a config, and the CLI runner."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline_v2.cli import app
from pipeline_v2.config import Config, load_config


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def invoke(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Any]:
    """Run the CLI inside tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIPELINE_CONFIG", raising=False)

    def run(*args: str, **kwargs: Any) -> Any:
        return runner.invoke(app, list(args), **kwargs)

    return run


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Config]:
    """Write a stages.json in tmp_path from a dict and load it."""

    def write(raw: dict[str, Any], name: str = "stages.json") -> Config:
        path = tmp_path / name
        path.write_text(json.dumps(raw), encoding="utf-8")
        return load_config(path)

    return write
