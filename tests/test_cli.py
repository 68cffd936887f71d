"""CLI basics: init, status on a fresh DB, trials/show, and help on every command."""

from __future__ import annotations

import json
from pathlib import Path

import typer.main

from pipeline_v2.cli import app
from pipeline_v2.config import Config

SEED_KEYS = {"pipeline", "trials_pending", "trials_processing", "trials_deployed", "last_check"}


def test_init_writes_seed_config_and_db_then_changes_nothing(invoke, tmp_path: Path) -> None:
    result = invoke("init")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "stages.json").read_text()) == Config().to_json()
    assert (tmp_path / "pipeline_v2.db").exists()
    config_before = (tmp_path / "stages.json").read_text()
    again = invoke("init")
    assert again.exit_code == 0
    assert again.stdout.startswith("Nothing to do:")
    assert (tmp_path / "stages.json").read_text() == config_before


def test_init_force_rewrites_config_never_db(invoke, tmp_path: Path) -> None:
    invoke("init")
    (tmp_path / "stages.json").write_text(json.dumps({"daemon": {"workers": 9}}))
    db_before = (tmp_path / "pipeline_v2.db").read_bytes()
    result = invoke("init", "--force")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "stages.json").read_text())["daemon"]["workers"] == 2
    assert (tmp_path / "pipeline_v2.db").read_bytes() == db_before


def test_status_json_on_a_fresh_db(invoke) -> None:
    invoke("init")
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= SEED_KEYS
    counts = {k: v for k, v in data.items() if k.startswith("trials_")}
    assert set(counts.values()) == {0}
    assert {"trials_passed", "trials_rejected", "trials_failed", "trials_validated"} <= set(counts)
    assert data["pipeline"] == "down"
    assert data["last_check"] is None
    assert data["deployments"] == []
    assert data["stages"] == {"backtest": {}, "cge_stress": {}, "deploy": {}}


def test_status_table(invoke) -> None:
    invoke("init")
    result = invoke("status")
    assert result.exit_code == 0
    assert "pipeline down (no daemon has run yet)" in result.stdout
    assert "backtest" in result.stdout


def test_trials_rejects_an_unknown_status(invoke) -> None:
    invoke("init")
    result = invoke("trials", "--status", "done")
    assert result.exit_code == 2
    assert result.stderr.startswith('error: --status: unknown status "done" (expected one of ')


def test_show_unknown_trial_lists_what_exists(invoke) -> None:
    invoke("init")
    result = invoke("show", "5")
    assert result.exit_code == 2
    assert result.stderr == (
        'error: no trial "5"; the state DB has no trials yet (run "pipeline discover")\n'
    )


def _commands(group, prefix: str = "") -> list[tuple[str, object]]:
    """Every command and sub-command (typer vendors click, so duck-type the groups)."""
    found = []
    for name, cmd in group.commands.items():
        found.append((prefix + name, cmd))
        if hasattr(cmd, "commands"):
            found.extend(_commands(cmd, f"{prefix}{name} "))
    return found


def test_every_command_has_help(invoke) -> None:
    group = typer.main.get_command(app)
    commands = _commands(group)  # type: ignore[arg-type]
    assert len(commands) >= 8
    for name, cmd in commands:
        assert cmd.help and cmd.help.strip(), f"{name} has no help"
        result = invoke(*name.split(), "--help")
        assert result.exit_code == 0, name
        for param in cmd.params:
            if param.param_type_name == "option":
                assert param.help, f"{name} {param.opts} has no help"


def test_every_data_command_takes_config(invoke) -> None:
    group = typer.main.get_command(app)
    for name, cmd in _commands(group):  # type: ignore[arg-type]
        # `config schema` reads no config; `demo` writes its own in --dir.
        if hasattr(cmd, "commands") or name in ("config schema", "demo"):
            continue
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert "--config" in opts, name


def test_python_dash_m(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pipeline_v2", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0
    assert "Usage: pipeline" in result.stdout


def test_status_watch_prints_a_snapshot_per_interval_when_piped(invoke, tmp_path) -> None:
    import json
    import select
    import subprocess
    import sys
    import time

    invoke("init")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline_v2", "status", "--watch", "--json",
                             "--interval", "0.1"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 15
    try:
        while len(lines) < 3 and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.2)[0]:
                lines.append(proc.stdout.readline())
    finally:
        proc.kill()
        proc.communicate()
    assert [json.loads(line)["pipeline"] for line in lines] == ["down"] * 3


def test_all_flags_say_what_they_do(invoke) -> None:
    stop = invoke("stop", "--help").stdout
    assert "pipeline itself" not in stop and "Stop every deployed trader" in " ".join(
        stop.split())
    pause = " ".join(invoke("pause", "--help").stdout.split())
    assert "Pause the whole pipeline" in pause and "trials keep their status" in pause


def test_the_report_never_cuts_the_trial_at_80_columns() -> None:
    from rich.console import Console

    from pipeline_v2 import render

    row = {"trial": "momentum_family_2024:1234", "status": "validated", "reason": "x" * 60,
           "backtest": {"sharpe": 1.23456, "deflated_sharpe": 0.9, "max_drawdown": 0.1},
           "stress": {"profitable_fraction": 0.5}, "paper": {"total_return": 0.1, "sharpe": 1}}
    console = Console(width=80, record=True, color_system=None)
    console.print(render.report_view({"rank_by": "backtest.sharpe", "counts": {"validated": 1},
                                      "trials": [row]}))
    assert "momentum_family_2024:1234" in console.export_text()


def test_json_output_of_dataclasses_enums_and_odd_floats() -> None:
    """What `--json` output is built from, fast path or not: field order kept, enums as their
    value, non-finite floats (plain or a float subclass) as null / "inf", tuples as lists."""
    import math
    from dataclasses import dataclass

    from pipeline_v2.models import TrialStatus
    from pipeline_v2.render import jsonable

    class Price(float):
        pass

    @dataclass
    class Inner:
        status: TrialStatus
        values: tuple

    @dataclass
    class Outer:
        name: str
        inner: Inner
        extra: dict

    value = Outer("x", Inner(TrialStatus.PASSED, (1, math.nan, True, None)),
                  {1: Price("inf"), "m": [-math.inf, Price(2.5)], "t": Inner})
    assert jsonable(value) == {
        "name": "x", "inner": {"status": "passed", "values": [1, None, True, None]},
        "extra": {"1": "inf", "m": ["-inf", 2.5], "t": Inner}}
    assert list(jsonable(value)) == ["name", "inner", "extra"]
