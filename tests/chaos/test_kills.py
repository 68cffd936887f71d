"""The daemon SIGKILLed at random moments and at the spawn/commit boundary, while 4 readers poll
`pipeline status --json`; afterwards a clean `--until-idle` run must leave every trial final,
nothing recorded twice, no duplicate trader ever seen, nothing orphaned, nothing else signalled."""

from __future__ import annotations

import random

import pytest

from tests.chaos import invariants as inv
from tests.chaos.harness import (
    COMMAND,
    TALLY,
    DaemonUnderFire,
    ProcessSampler,
    StatusReaders,
    Workspace,
    aimed_kill,
    aimed_kill_on_row,
    bystanders,
    note,
    run_until_idle,
    sleep_random,
    stages_config,
)

pytestmark = pytest.mark.chaos



def kill_storm(ws: Workspace, *, random_kills: int, aimed: list[str], seed: int,
               readers: int = 4, high: float = 2.0) -> None:
    """Random SIGKILLs and aimed ones (`aimed`: a needle of a new child's argv, or
    `row:deployment` / `row:stage` for a row just committed), in random order, with status
    readers throughout; then the final clean run and every invariant."""
    rng = random.Random(seed)
    TALLY.trials += sum(1 for _ in ws.optuna_numbers())
    daemon = DaemonUnderFire(ws)
    sampler = ProcessSampler(ws.root)
    sampler.start()
    with bystanders() as others, StatusReaders(ws, readers, pause=2.0) as status:
        plan = ["random"] * random_kills + aimed
        rng.shuffle(plan)
        for kind in plan:
            note(f"start ({kind})")
            daemon.start()
            if kind.startswith("row:"):
                hit = aimed_kill_on_row(daemon, kind.removeprefix("row:"))
            else:
                hit = kind != "random" and aimed_kill(daemon, kind)
            if not hit:
                if rng.random() < 0.8:  # most kills land in the loop, some in start-up
                    daemon.wait_ready()
                note("ready")
                sleep_random(rng, 0.0, high)
                daemon.kill()
        note("until idle")
        code = run_until_idle(daemon)
        note("stop --all")
        stopped = ws.cli("stop", "--all")
        note("checks")
        signalled = inv.untouched(others)
    sampler.stop()
    assert daemon.kills >= random_kills
    broken = {
        "final run exit": [] if code == 0 else [f"exit {code}: {daemon.tail()}"],
        "stop --all": [] if stopped.returncode == 0 else [stopped.stderr.strip()],
        "daemon died on its own": [str(c) for c in daemon.unexpected_exits],
        **inv.db_invariants(ws),
        "duplicate processes": inv.duplicate_processes(sampler),
        "orphans": inv.orphans(ws),
        "signalled, not ours": signalled,
        "status readers": status.failures[:10],
    }
    assert {name: found for name, found in broken.items() if found} == {}


@pytest.mark.chaos_fast
def test_fast_kill_storm(make_workspace) -> None:
    """The `make test` subset: 8 trials, a random kill and one at a stage's spawn."""
    ws = make_workspace(trials=8, seed=1, trader_beats=20)
    kill_storm(ws, random_kills=1, aimed=[COMMAND], seed=1, readers=1, high=1.0)


def test_kill_storm_200_trials(make_workspace) -> None:
    """200 trials x 3 stages + deployments; 22 random SIGKILLs and 8 aimed ones: at a new
    trader's shim, a new command stage, a deployment just committed `starting`, a stage just
    claimed `running`."""
    ws = make_workspace(trials=200, seed=7, trader_beats=24)
    aimed = ["shim.py", COMMAND, "row:deployment", "row:stage"] * 2
    kill_storm(ws, random_kills=22, aimed=aimed, seed=7)


def test_kills_at_trader_spawn(make_workspace) -> None:
    """Every kill lands the moment a trader's shim appears, before its row can be committed."""
    ws = make_workspace(trials=30, seed=11)
    kill_storm(ws, random_kills=0, aimed=["shim.py"] * 5, seed=11, readers=1)


def test_kills_at_stage_spawn(make_workspace) -> None:
    """Every kill lands the moment a (3 s) command stage starts: the next daemon must not run
    the same attempt beside it, and nothing may outlive the run."""
    ws = make_workspace(trials=20, seed=13, stages=stages_config(command_seconds=3.0))
    kill_storm(ws, random_kills=0, aimed=[COMMAND] * 5, seed=13, readers=1)
