"""The entry point's lazy group prints the same help as the full Typer app, builds only the
command run, and click's usage errors are one line naming the option, quoting the bad value and
saying what was expected (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from pipeline_v2.cli import app
from pipeline_v2.cli.group import Deferred, lazy_command


def command_paths(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The root, every command and every sub-command, as argv prefixes."""
    found = [prefix]
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            found.extend(command_paths(cmd, (*prefix, name)))
        else:
            found.append((*prefix, name))
    return found


def run(command, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run a click command in-process as the console script would; (exit code, out, err)."""
    with pytest.raises(SystemExit) as exit_:
        command.main(args, prog_name="pipeline")
    out, err = capsys.readouterr()
    return exit_.value.code or 0, out, err


PATHS = command_paths(typer.main.get_command(app))


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "pipeline")
def test_the_lazy_group_prints_the_full_apps_help(path, capsys) -> None:
    full = run(typer.main.get_command(app), [*path, "--help"], capsys)
    lazy = run(lazy_command(app), [*path, "--help"], capsys)
    assert lazy == full
    assert lazy[0] == 0 and lazy[1].startswith(f"Usage: {' '.join(('pipeline', *path))} ")


def test_every_command_and_group_is_covered() -> None:
    assert len(PATHS) >= 25 and ("config", "check") in PATHS and ("status",) in PATHS


def test_no_arguments_print_the_same_help_on_stderr(capsys) -> None:
    for path in ([], ["config"]):
        full = run(typer.main.get_command(app), path, capsys)
        assert run(lazy_command(app), path, capsys) == full
        assert full[0] == 2 and full[2].startswith("Usage: pipeline")


def test_the_lazy_group_builds_only_the_command_run(capsys) -> None:
    group = lazy_command(app)
    assert all(isinstance(cmd, Deferred) for cmd in group.commands.values())
    assert run(group, ["--help"], capsys)[0] == 0
    assert all(isinstance(cmd, Deferred) for cmd in group.commands.values())
    assert run(group, ["status", "--help"], capsys)[0] == 0
    built = [name for name, cmd in group.commands.items() if not isinstance(cmd, Deferred)]
    assert built == ["status"]


USAGE_ERRORS = [
    (["trials", "--limit", "abc"], 'error: --limit: expected an integer >= 1, got "abc"'),
    (["trials", "--limit", "0"], 'error: --limit: expected an integer >= 1, got "0"'),
    (["status", "--watch", "--interval", "0"],
     'error: --interval: expected a number >= 0.1, got "0"'),
    (["dashboard", "--port", "70000"],
     'error: --port: expected an integer from 0 to 65535, got "70000"'),
    (["demo", "--trials", "1.5"], 'error: --trials: expected an integer >= 1, got "1.5"'),
    (["trials", "--limit"], "error: --limit: missing value (expected an integer >= 1)"),
    (["status", "--jsn"], 'error: --jsn: not an option of "pipeline status" '
                          "(did you mean --json?)"),
    (["status", "--bogus"], 'error: --bogus: not an option of "pipeline status" '
                            "(expected one of --config, --json, --watch, --interval, --help)"),
    (["--bogus"], 'error: --bogus: not an option of "pipeline" (expected one of --debug, --help)'),
    (["status", "--json=yes"], 'error: --json: a flag, it takes no value (drop the "=...")'),
    (["show"], "error: pipeline show: missing TRIAL (trial number, or study:number)"),
    (["skip", "3"], "error: pipeline skip: missing STAGE (stage name)"),
    (["show", "3", "4"], 'error: pipeline show: unexpected argument "4" (it takes TRIAL)'),
    (["status", "now"], 'error: pipeline status: unexpected argument "now" '
                        "(it takes no arguments)"),
    (["stat"], 'error: stat: not a command of "pipeline" (did you mean status?)'),
    (["config", "chek"], 'error: chek: not a command of "pipeline config" '
                         "(did you mean check or schema?)"),
    (["config", "zzz"], 'error: zzz: not a command of "pipeline config" '
                        "(expected one of check, show, schema)"),
    # checked before the workspace is opened (there is none here)
    (["trials", "--json", "--jsonl"], "error: --json and --jsonl: choose one"),
    (["pause"], "error: pipeline pause: missing TRIAL (trial number, or study:number) or --all"),
    (["resume", "3", "--all"], 'error: pipeline resume: TRIAL "3" and --all: choose one'),
    (["stop"], "error: pipeline stop: missing TRIAL (trial number, or study:number) or --all"),
]


@pytest.mark.parametrize(("args", "line"), USAGE_ERRORS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else "")
def test_a_usage_error_is_one_line(invoke, args, line) -> None:
    result = invoke(*args, prog_name="pipeline")
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", line + "\n")


def test_an_unknown_command_lists_them_all_when_none_is_close(invoke) -> None:
    result = invoke("zzz", prog_name="pipeline")
    assert result.exit_code == 2
    assert result.stderr.startswith('error: zzz: not a command of "pipeline" (expected one of '
                                    "init, status, trials, show, ")
    assert result.stderr.endswith(", backtest, config)\n")


def test_a_missing_command_is_one_line(invoke) -> None:
    result = invoke("--debug", prog_name="pipeline")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: pipeline: missing command (expected one of init, ")


def test_a_directory_for_the_config_is_named_by_where_it_came_from(invoke, tmp_path) -> None:
    result = invoke("status", "--config", str(tmp_path))
    assert result.stderr == f'error: --config: "{tmp_path}" is a directory (expected a file)\n'
    result = invoke("status", env={"PIPELINE_CONFIG": str(tmp_path)})
    assert result.exit_code == 2
    assert result.stderr == (f'error: $PIPELINE_CONFIG: "{tmp_path}" is a directory '
                             "(expected a file)\n")


def test_a_bad_flag_value_from_the_environment_says_what_it_takes(invoke) -> None:
    result = invoke("status", env={"PIPELINE_DEBUG": "maybe"}, prog_name="pipeline")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == ('error: $PIPELINE_DEBUG: expected true or false (1/0, yes/no, '
                             'on/off), got "maybe"\n')


def test_status_interval_without_watch_is_a_usage_error(invoke) -> None:
    invoke("init")
    result = invoke("status", "--interval", "5")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == ('error: --interval: only applies with --watch (got "5" without '
                             "--watch)\n")
    assert invoke("status", "--json").exit_code == 0


def test_the_console_script_says_usage_errors_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pipeline_v2", "trials", "--limit", "abc"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == 'error: --limit: expected an integer >= 1, got "abc"\n'
