"""Shared fixtures: a workspace folder with a config, and the CLI runner."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline_v2.cli import app
from pipeline_v2.config import Config, load_config
from tests.optuna_helpers import FILE_KINDS, STORAGE_KINDS, Storage, file_storage
from tests.servers import server_database


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


@pytest.fixture(scope="session")
def postgresql_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A fresh PostgreSQL database for this session, or skip saying why there is none."""
    with server_database("postgresql", tmp_path_factory.mktemp("servers")) as server:
        yield server


@pytest.fixture(scope="session")
def mysql_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A fresh MariaDB/MySQL database for this session, or skip saying why there is none."""
    with server_database("mysql", tmp_path_factory.mktemp("servers")) as server:
        yield server


@pytest.fixture(params=STORAGE_KINDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each storage kind in turn: a file in tmp_path, or an emptied server database."""
    kind = request.param
    if kind in FILE_KINDS:
        return file_storage(kind, tmp_path)
    server = request.getfixturevalue(f"{kind}_server")
    if isinstance(server, str):
        pytest.skip(server)
    server.reset()
    missing = server.reader.rsplit("/", 1)[0] + "/pv2_no_such_db"
    return Storage(kind, server.writer, server.reader, missing)


@pytest.fixture
def no_trader_outlives_its_test(tmp_path: Path) -> Iterator[None]:
    """Traders are meant to outlive daemons; they must not outlive the test (modules that
    start them use it through `pytestmark`)."""
    import contextlib

    import psutil

    from tests.test_deploy import traders

    yield
    for proc in traders(tmp_path, shims=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
