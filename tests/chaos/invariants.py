"""The invariants every chaos scenario checks: each returns a list of violations (empty = holds),
so a scenario can assert them one by one and a failure names what broke."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable

import psutil

from tests.chaos.harness import (
    FINAL,
    LIVE_DEPLOYMENT,
    TALLY,
    ProcessSampler,
    Workspace,
    marked_processes,
)

VERDICTS = ("stage.passed", "stage.rejected", "stage.failed")


def integrity(ws: Workspace) -> list[str]:
    """`PRAGMA integrity_check` is ok."""
    conn = ws.read()
    try:
        verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    return [] if verdict == "ok" else [f"integrity_check: {verdict}"]


def lost_trials(ws: Workspace) -> list[str]:
    """Every COMPLETE Optuna trial of a watched study is in the state DB."""
    conn = ws.read()
    try:
        known = {(r[0], r[1]) for r in conn.execute("SELECT study, trial_number FROM trials")}
    finally:
        conn.close()
    lost = sorted(t for t in ws.optuna_numbers() if t[0] in ws.studies and t not in known)
    TALLY.lost += len(lost)
    return [f"lost: {study!r}:{number}" for study, number in lost[:20]]


def not_final(ws: Workspace) -> list[str]:
    """Every trial ended in a final status (validated, retired, rejected, failed, cancelled)."""
    conn = ws.read()
    try:
        rows = conn.execute("SELECT id, trial_number, status FROM trials").fetchall()
    finally:
        conn.close()
    return [f"trial {r['trial_number']} (id {r['id']}) is {r['status']}" for r in rows
            if r["status"] not in FINAL]


def stage_verdicts_twice(ws: Workspace) -> list[str]:
    """No stage's verdict (passed / rejected / failed) was recorded twice."""
    conn = ws.read()
    try:
        rows = conn.execute(
            "SELECT trial_id, stage, COUNT(*) AS n FROM events WHERE kind IN (?, ?, ?)"
            " GROUP BY trial_id, stage HAVING n > 1", VERDICTS).fetchall()
    finally:
        conn.close()
    return [f"trial id {r['trial_id']} stage {r['stage']}: {r['n']} verdicts" for r in rows]


def stages_consistent(ws: Workspace) -> list[str]:
    """A final trial has no stage left running or pending, and a passed stage has results."""
    conn = ws.read()
    try:
        rows = conn.execute(
            "SELECT t.id, t.status AS trial, s.stage_name, s.status, s.results FROM stages s"
            " JOIN trials t ON t.id = s.trial_id").fetchall()
    finally:
        conn.close()
    bad = []
    for r in rows:
        if r["trial"] in FINAL and r["status"] == "running":
            bad.append(f"trial id {r['id']} is {r['trial']} but {r['stage_name']} is running")
        if r["status"] == "passed" and r["results"] is None:
            bad.append(f"trial id {r['id']}: {r['stage_name']} passed without results")
    return bad


def events_match_tables(ws: Workspace) -> list[str]:
    """Each trial's status is the new status of its last trial event."""
    conn = ws.read()
    try:
        rows = conn.execute(
            "SELECT t.id, t.status, (SELECT e.new_status FROM events e WHERE e.trial_id = t.id"
            " AND e.kind LIKE 'trial.%' AND e.new_status IS NOT NULL ORDER BY e.id DESC LIMIT 1)"
            " AS last FROM trials t").fetchall()
    finally:
        conn.close()
    return [f"trial id {r['id']} is {r['status']}, its last event says {r['last']}"
            for r in rows if r["last"] is not None and r["last"] != r["status"]]


def one_live_deployment_per_trial(ws: Workspace) -> list[str]:
    """The DB never holds two live deployments for one trial."""
    conn = ws.read()
    try:
        rows = conn.execute(
            "SELECT trial_id, COUNT(*) AS n FROM deployments WHERE status IN (?, ?, ?, ?)"
            " GROUP BY trial_id HAVING n > 1", LIVE_DEPLOYMENT).fetchall()
    finally:
        conn.close()
    return [f"trial id {r['trial_id']}: {r['n']} live deployments" for r in rows]


def duplicate_processes(sampler: ProcessSampler) -> list[str]:
    """Never two live traders for one trial, nor two processes of one command-stage attempt,
    in any sample of the process table."""
    return [str(d) for d in sampler.duplicates[:20]]


def orphans(ws: Workspace, grace: float = 3.0) -> list[str]:
    """No process of ours is left (each carries the workspace's marker in its environment);
    those already on their way out (a forkserver noticing its parent is gone) get `grace` s."""
    deadline = time.monotonic() + grace
    while (left := marked_processes(ws.mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [f"pid {p.pid}: {' '.join(_cmd(p))[:200]}" for p in left]


def untouched(processes: Iterable[psutil.Popen]) -> list[str]:
    """Processes that are not ours (children of the test, in their own session) still run."""
    bad = []
    for proc in processes:
        code = proc.poll()
        if code is not None:
            bad.append(f"pid {proc.pid} (not ours) ended: exit {code}")
    return bad


def db_invariants(ws: Workspace, *, final: bool = True) -> dict[str, list[str]]:
    """Every DB invariant by name (only the violated ones)."""
    checks = {
        "integrity": integrity(ws), "lost": lost_trials(ws),
        "stage_verdict_twice": stage_verdicts_twice(ws),
        "stages_consistent": stages_consistent(ws),
        "events_match_tables": events_match_tables(ws),
        "two_live_deployments": one_live_deployment_per_trial(ws),
    }
    if final:
        checks["not_final"] = not_final(ws)
    return {name: found for name, found in checks.items() if found}


def _cmd(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def safe_read(ws: Workspace, sql: str, *args: object) -> list[sqlite3.Row]:
    """A query for a scenario's own checks."""
    conn = ws.read()
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()
