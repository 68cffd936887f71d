"""Hostile study names, params and user_attrs (shell metacharacters, `../`, NUL, newlines,
markup, 100 KB strings, names differing only in punctuation, names over 255 bytes) flowing
through every template (`{study}`, `{params[s]}`, `{user_attrs[u]}`, `{model_dir}` in a command
stage's argv, and the model_dir template) and every path the pipeline makes."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

from tests.chaos import invariants as inv
from tests.chaos.harness import (
    TALLY,
    DaemonUnderFire,
    Workspace,
    add_trials,
    run_until_idle,
    stages_config,
)

pytestmark = pytest.mark.chaos


HOSTILE = [
    "$(touch PWNED)", "`touch PWNED`", "; rm -rf ~ #", "a|b&c>d<e", "'\"\\", "-rf",
    "../../escape", "../", "..", "/abs/path", "line1\nline2", "tab\there", "\r", "a\x00b",
    "[/]", "[bold red]x[/]", "%s{0}{study}", "*?[!]", "~", " spaced ", "é中🙂",
]
PUNCTUATION_TWINS = ["alpha.beta", "alpha_beta", "alpha-beta", "alpha beta", "alpha/beta",
                     "alpha:beta"]
LONG = ["n" * 300, "é" * 200, "x" * 100_000]
BIG_VALUE = "v" * 100_000
ARGV = ["{study}", "{params[s]}", "{user_attrs[u]}", "{model_dir}"]
MODEL_DIR = "models/{study}/{params[s]}/{user_attrs[u]}"


def hostile_workspace(make: Callable[..., Workspace], studies: list[str], values: list[str],
                      seed: int) -> Workspace:
    """One study per hostile name; each trial carries hostile `s` and `u` values."""
    ws = make(trials=0, studies=[], seed=seed, model_dir=MODEL_DIR,
                         stages=stages_config(error_rate=0.0, extra_argv=ARGV))
    rng = random.Random(seed)
    for i, name in enumerate(studies):
        value = values[i % len(values)]
        add_trials(ws.url, name, 2, rng, attrs={"u": values[(i + 1) % len(values)]},
                   strings={"s": value})
    raw = json.loads(ws.config.read_text())
    raw["optuna"]["studies"] = studies
    ws.config.write_text(json.dumps(raw))
    ws.studies = studies
    TALLY.hostile_inputs += len(studies) + 2 * len(studies)  # names, and s / u values
    TALLY.trials += 2 * len(studies)
    return ws


def outside_files(ws: Workspace) -> list[str]:
    """Files the run made outside logs/ (and anything named PWNED anywhere near)."""
    expected = {"optuna.db", "state.db", "stages.json", "daemon.out", "state.db.lock",
                "state.db-wal", "state.db-shm", "optuna.db-wal", "optuna.db-shm"}
    found = [str(p) for p in ws.root.iterdir() if p.name not in expected and p.name != "logs"]
    found += [str(p) for p in ws.root.parent.rglob("PWNED")]
    found += [str(p) for p in ws.root.parent.iterdir() if p.name == "escape"]
    return found


def run_hostile(ws: Workspace) -> int:
    daemon = DaemonUnderFire(ws)
    code = run_until_idle(daemon, timeout=240)
    assert ws.cli("stop", "--all").returncode == 0
    return code


def test_hostile_values_in_every_template(make_workspace) -> None:
    """Every value reaches the command stage exactly as Optuna holds it (argv, no shell);
    nothing is written outside the workspace; a value no argv can carry (NUL) fails its trial
    with a reason instead of stopping the daemon."""
    ws = hostile_workspace(make_workspace, HOSTILE, [*HOSTILE, BIG_VALUE], seed=51)
    code = run_hostile(ws)
    assert code == 0, ws.root.joinpath("daemon.out").read_text()[-3000:]
    assert outside_files(ws) == []
    assert inv.db_invariants(ws) == {}
    assert inv.orphans(ws) == []
    rows = inv.safe_read(ws, "SELECT t.study, t.params, t.user_attrs, t.model_dir, s.results"
                             " FROM stages s JOIN trials t ON t.id = s.trial_id"
                             " WHERE s.stage_name = 'check' AND s.status = 'passed'")
    assert rows, "no trial got through the command stage"
    for row in rows:
        params, attrs = json.loads(row["params"]), json.loads(row["user_attrs"])
        expected = [row["study"], params["s"], attrs["u"], row["model_dir"]]
        assert json.loads(row["results"])["echo"] == expected
    nul = inv.safe_read(ws, "SELECT status FROM trials WHERE instr(study, char(0)) > 0")
    assert all(r["status"] in ("failed", "rejected") for r in nul)


def test_study_names_over_255_bytes(make_workspace) -> None:
    """300-byte, 400-byte (UTF-8) and 100 KB study names: paths stay bounded, the daemon lives."""
    ws = hostile_workspace(make_workspace, LONG, ["plain"], seed=53)
    code = run_hostile(ws)
    assert code == 0, ws.root.joinpath("daemon.out").read_text()[-3000:]
    assert inv.db_invariants(ws) == {}
    assert all(len(p.name.encode()) <= 255 for p in ws.logs.rglob("*"))
    too_long = inv.safe_read(ws, "SELECT message FROM events WHERE message LIKE '%too long%'")
    assert [r[0] for r in too_long] == [], "a long name failed its trials instead of mapping"


def test_names_differing_only_in_punctuation(make_workspace) -> None:
    """Studies whose names differ only in punctuation get distinct folders, so their traders
    never share heartbeat, metrics or exit-code files."""
    ws = hostile_workspace(make_workspace, PUNCTUATION_TWINS, ["plain"], seed=55)
    code = run_hostile(ws)
    assert code == 0, ws.root.joinpath("daemon.out").read_text()[-3000:]
    assert inv.db_invariants(ws) == {}
    rows = inv.safe_read(ws, "SELECT run_dir, COUNT(DISTINCT trial_id) AS n FROM deployments"
                             " GROUP BY run_dir HAVING n > 1")
    assert [r["run_dir"] for r in rows] == []


@pytest.mark.parametrize("command", [
    ("status",), ("trials",), ("report",), ("show", "{ref}")], ids=lambda c: " ".join(c))
def test_cli_shows_hostile_values_as_text(make_workspace, command: tuple[str, ...]) -> None:
    """`[/]` and friends in names and values are printed, never parsed as markup."""
    ws = hostile_workspace(make_workspace, ["[/]", "[bold]x"], ["[/]"], seed=57)
    assert ws.cli("discover").returncode == 0
    result = ws.cli(*(part.format(ref="[/]:0") for part in command))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    if command[0] != "status":  # status shows counts, no names
        assert "[/]" in result.stdout
