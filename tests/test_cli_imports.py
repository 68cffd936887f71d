"""The CLI imports only what a command needs: no pandas, numpy, optuna or sqlite-utils at start,
nor on the `status` path; no pydantic or rich for `--help`, no rich for `--json` (imports, not
timings: speed is measured in bench/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_v2.config import load_config
from pipeline_v2.store import open_store

HEAVY = ("numpy", "pandas", "optuna", "sqlite_utils", "sqlalchemy", "pipeline_v2.backtest",
         "rich", "yaml")
# Typer validates option values with pydantic, and the config is pydantic: not for help.
HELP_HEAVY = (*HEAVY, "pydantic", "pipeline_v2.config", "pipeline_v2.store")
PROBE = """
import sys
sys.argv = ["pipeline", *{args!r}]
from pipeline_v2.cli import main
try:
    main()
except SystemExit:
    pass
loaded = sorted(m for m in {heavy!r} if m in sys.modules)
sys.stderr.write("LOADED=" + ",".join(loaded) + "\\n")
"""


def loaded_by(*args: str, cwd: Path, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """Run the CLI with these arguments in a fresh interpreter; the heavy modules it imported."""
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=list(args), heavy=heavy)],
                          cwd=cwd, capture_output=True, text=True, timeout=60)
    line = next(x for x in proc.stderr.splitlines() if x.startswith("LOADED="))
    return [m for m in line.removeprefix("LOADED=").split(",") if m]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A config and its state DB, migrated beforehand (as a running daemon would leave it)."""
    path = tmp_path / "stages.json"
    path.write_text(json.dumps({"optuna": {"storage": "sqlite:///optuna.db"}}))
    open_store(load_config(path)).close()
    return path


def test_help_imports_nothing_heavy(tmp_path: Path) -> None:
    assert loaded_by("--help", cwd=tmp_path, heavy=HELP_HEAVY) == []


def test_a_commands_help_imports_nothing_heavy(tmp_path: Path) -> None:
    assert loaded_by("status", "--help", cwd=tmp_path, heavy=HELP_HEAVY) == []
    assert loaded_by("config", "show", "--help", cwd=tmp_path, heavy=HELP_HEAVY) == []


def test_status_json_imports_nothing_heavy(workspace: Path) -> None:
    assert loaded_by("status", "--json", "-c", str(workspace), cwd=workspace.parent) == []


def test_trials_json_imports_nothing_heavy(workspace: Path) -> None:
    assert loaded_by("trials", "--json", "-c", str(workspace), cwd=workspace.parent) == []
