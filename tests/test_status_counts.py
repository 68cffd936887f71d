"""The trigger-kept count tables (migration m010) always equal a plain GROUP BY.

A random walk through the store's real operations (discovery, claims, outcomes decided by the
plan, retry / skip / pause / resume / cancel, deployments, imports, rolled-back transactions,
writes behind the store's back, deletions) compares them after every step; a DB migrated with
rows already in it starts from correct counts.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from pipeline_v2 import control, plan, schema, schema_counts
from pipeline_v2.errors import PipelineError
from pipeline_v2.models import DeploymentStatus, StageStatus, TrialStatus
from pipeline_v2.plan import Outcome
from pipeline_v2.store import Store, legacy, observe, queries
from pipeline_v2.store.base import sql_in

DEAD = sql_in(queries.DEAD_TRIAL)
# What the count tables stand for, read the slow way.
TRIALS_SCAN = "SELECT status, COUNT(*) FROM trials GROUP BY 1"
STAGES_SCAN = (
    "SELECT s.stage_name, s.status,"
    f" COALESCE(s.status = 'pending' AND t.status IN {DEAD}, 0), COUNT(*)"
    " FROM stages s LEFT JOIN trials t ON t.id = s.trial_id GROUP BY 1, 2, 3"
)
STAGES = {
    "backtest": {"run": "m:f", "max_attempts": 2, "gates": {"sharpe": ">= 1.0"}},
    "stress": {"run": "m:f", "max_attempts": 3},
    "extra": {"run": "m:f", "enabled": False},
    "deploy": {"kind": "deploy", "command": ["true"], "max_attempts": 1},
}


# ... and what /metrics reads from the events and stage-durations counts.
OUTCOMES_SCAN = ("SELECT stage, new_status, COUNT(*) FROM events WHERE kind LIKE 'stage.%'"
                 " AND old_status = 'running' GROUP BY 1, 2")
EVENTS_SCAN = "SELECT stage, COUNT(*) FROM events WHERE kind = ? GROUP BY 1"
CASES = ", ".join(f"SUM(d <= {b})" for b in observe.DURATION_BUCKETS)
DURATIONS_SCAN = (
    f"SELECT stage_name, {CASES}, SUM(d), COUNT(*) FROM (SELECT stage_name,"
    " finished_at - started_at AS d FROM stages WHERE finished_at IS NOT NULL"
    " AND started_at IS NOT NULL AND status IN ('passed', 'rejected', 'failed')) GROUP BY 1"
)


def assert_metrics_true(store: Store, step: str) -> None:
    outcomes = {(r[0], observe._OUTCOMES.get(r[1], r[1])): r[2]
                for r in store.conn.execute(OUTCOMES_SCAN)}
    assert observe.attempt_outcomes(store) == outcomes, step
    for kind in ("stage.rejected", "trial.discovered", "stage.running", "deployment.created"):
        events = {r[0]: r[1] for r in store.conn.execute(EVENTS_SCAN, [kind])}
        assert observe.event_counts(store, kind) == events, (step, kind)
    n = len(observe.DURATION_BUCKETS)
    durations = {r[0]: ([int(r[i + 1]) for i in range(n)] + [r[n + 2]], r[n + 1], r[n + 2])
                 for r in store.conn.execute(DURATIONS_SCAN)}
    kept_durations = observe.stage_durations(store)
    assert {k: (v[0], v[2]) for k, v in kept_durations.items()} == {
        k: (v[0], v[2]) for k, v in durations.items()}, step
    for name, (_, total, _) in durations.items():  # sums kept by + and -: equal to rounding
        assert kept_durations[name][1] == pytest.approx(total, abs=1e-6), step


def scanned(store: Store) -> tuple[dict[str, int], dict[tuple[str, str, int], int]]:
    """The counts as GROUP BYs over every trial and stage."""
    trials = {r[0]: r[1] for r in store.conn.execute(TRIALS_SCAN)}
    stages = {(r[0], r[1], r[2]): r[3] for r in store.conn.execute(STAGES_SCAN)}
    return trials, stages


def kept(store: Store) -> tuple[dict[str, int], dict[tuple[str, str, int], int]]:
    """The count tables as they stand (no row may go negative)."""
    negative = store.conn.execute("SELECT * FROM trial_counts WHERE n < 0 UNION ALL"
                                  " SELECT stage_name, n FROM stage_counts WHERE n < 0").fetchall()
    assert negative == []
    trials = {r[0]: r[1] for r in store.conn.execute("SELECT status, n FROM trial_counts"
                                                     " WHERE n > 0")}
    stages = {(r[0], r[1], r[2]): r[3] for r in store.conn.execute(
        "SELECT stage_name, status, dead, n FROM stage_counts WHERE n > 0")}
    return trials, stages


def assert_counts_true(store: Store, step: str) -> None:
    trials, stages = scanned(store)
    assert kept(store) == (trials, stages), step
    assert store.trial_counts() == trials, step
    assert store.count_trials() == sum(trials.values()), step
    assert [store.count_trials(s.value) for s in TrialStatus] == [
        trials.get(s.value, 0) for s in TrialStatus], step
    live: dict[str, dict[str, int]] = {}
    for (name, status, dead), n in stages.items():
        if not dead:
            live.setdefault(name, {})[status] = n
    assert store.stage_counts() == live, step
    assert_metrics_true(store, step)


class Walk:
    """Random real operations on one store; refused ones (a PipelineError) are part of it."""

    def __init__(self, store: Store, config: Any, rng: random.Random) -> None:
        self.store, self.config, self.rng = store, config, rng
        self.now, self.number = 1_000.0, 0

    def step(self, name: str) -> bool:
        """Run one operation; False when the store or a command refused it (nothing changed)."""
        try:
            getattr(self, name)()
        except PipelineError:
            return False
        return True

    def trial(self, *statuses: TrialStatus) -> Any | None:
        """A random trial, mostly one in these statuses when there is one."""
        trials = self.store.list_trials()
        fitting = [t for t in trials if t.status in statuses]
        if fitting and self.rng.random() < 0.8:
            return self.rng.choice(fitting)
        return self.rng.choice(trials) if trials else None

    def discover(self) -> None:
        rows, pos, status = plan.initial_stages(self.config)
        with self.store.transaction():
            for _ in range(self.rng.randint(1, 3)):
                self.number += 1
                self.store.add_trial({"study": "s", "number": self.number,
                                      "value": self.rng.random()}, rows, pos, self.now, status)

    def import_dead(self) -> None:
        """An imported trial that arrives rejected, its later stages still pending."""
        self.number += 1
        stages = [("backtest", StageStatus.REJECTED, {"attempts": 1}),
                  ("stress", StageStatus.PENDING, {}), ("extra", StageStatus.SKIPPED, {}),
                  ("deploy", StageStatus.PENDING, {})]
        with self.store.transaction():
            legacy.insert_imported(self.store, {"study": "s", "number": self.number}, stages, 0,
                                   TrialStatus.REJECTED, "imported", None, "v1", self.now)

    def claim(self) -> None:
        due = self.store.due_attempts(self.now, self.rng.randint(1, 4))
        self.store.claim_attempts([d.stage_id for d in due], self.now)

    def finish(self) -> None:
        running = [s for s in self.store.running_stages() if s.name != "deploy"]
        if not running:
            return
        stage = self.rng.choice(running)
        outcome = self.rng.choice([
            Outcome("ok", {"sharpe": self.rng.choice([0.5, 2.0])}), Outcome("reject", None, "no"),
            Outcome("error", None, "boom"), Outcome("error", None, "bad", final=True),
            Outcome("interrupted"), Outcome("requeue", None, "disk full")])
        statuses = {s.name: s.status for s in self.store.sibling_stages(stage.id)}
        earlier = self.store.stage_results(stage.trial_id)
        update = plan.after_attempt(stage, outcome, statuses, earlier, self.config, self.now)
        self.store.apply_stage_update(update, self.now)

    def retry(self) -> None:
        trial = self.trial(TrialStatus.REJECTED, TrialStatus.FAILED)
        if trial is not None:
            name = self.rng.choice([None, "backtest", "stress", "extra"])
            control.retry(self.store, self.config, trial.ref, name)

    def skip(self) -> None:
        trial = self.trial()
        if trial is not None:
            control.skip(self.store, self.config, trial.ref, self.rng.choice(list(STAGES)))

    def pause(self) -> None:
        trial = self.trial(TrialStatus.PENDING, TrialStatus.PROCESSING, TrialStatus.PASSED)
        if trial is not None:
            control.pause(self.store, trial.ref)

    def resume(self) -> None:
        trial = self.trial(TrialStatus.PAUSED)
        if trial is not None:
            control.resume(self.store, trial.ref)

    def cancel(self) -> None:
        trial = self.trial()
        if trial is not None:
            control.cancel(self.store, trial.ref)

    def deploy(self) -> None:
        passed = self.store.list_trials(TrialStatus.PASSED.value)
        if passed:
            self.store.begin_deployment(self.rng.choice(passed).id, "deploy", "run", self.now,
                                        "promoted")

    def end_deployment(self) -> None:
        live = self.store.deployments(DeploymentStatus.BACKOFF)
        if not live:
            return
        deployment = self.rng.choice(live)
        trial_status, stage_status = self.rng.choice([
            (TrialStatus.VALIDATED, StageStatus.PASSED), (TrialStatus.RETIRED,
                                                          StageStatus.FAILED),
            (TrialStatus.PASSED, StageStatus.CANCELLED), (TrialStatus.FAILED,
                                                          StageStatus.FAILED)])
        self.store.finish_deployment(deployment.trial_id, "deploy", trial_status, stage_status,
                                     self.now, "evaluated")
        self.store.set_deployment_status(deployment, DeploymentStatus.STOPPED, self.now)

    def rolled_back(self) -> None:
        """A transaction that changes statuses and then fails leaves the counts as they were."""
        trial = self.trial()
        if trial is None:
            return
        with pytest.raises(RuntimeError), self.store.transaction() as conn:
            conn.execute("UPDATE trials SET status = 'cancelled' WHERE id = ?", [trial.id])
            conn.execute("UPDATE stages SET status = 'running' WHERE trial_id = ?", [trial.id])
            raise RuntimeError("rolled back")

    def behind_the_back(self) -> None:
        """Plain SQL, no store method, and then undone the same way: the triggers see both."""
        trial = self.trial()
        if trial is None:
            return
        conn = self.store.conn
        first = conn.execute("SELECT stage_name, status FROM stages WHERE trial_id = ?"
                             " AND position = 0", [trial.id]).fetchone()
        with self.store.transaction():
            conn.execute("UPDATE trials SET status = ? WHERE id = ?",
                         [self.rng.choice(list(TrialStatus)).value, trial.id])
            conn.execute("UPDATE stages SET status = ?, stage_name = 'renamed' WHERE trial_id = ?"
                         " AND position = 0", [self.rng.choice(list(StageStatus)).value,
                                               trial.id])
        assert_counts_true(self.store, "behind the back")
        with self.store.transaction():
            conn.execute("UPDATE trials SET status = ? WHERE id = ?", [trial.status.value,
                                                                      trial.id])
            conn.execute("UPDATE stages SET status = ?, stage_name = ? WHERE trial_id = ?"
                         " AND position = 0", [first["status"], first["stage_name"], trial.id])

    def delete(self) -> None:
        """No command deletes a trial, but a hand-made DELETE keeps the counts true."""
        trial = self.trial()
        if trial is None:
            return
        conn = self.store.conn
        if self.rng.random() < 0.5:  # foreign keys on: the stages (and what refers) go first
            with self.store.transaction():
                conn.execute("DELETE FROM deployments WHERE trial_id = ?", [trial.id])
                conn.execute("DELETE FROM stages WHERE trial_id = ?", [trial.id])
                conn.execute("DELETE FROM trials WHERE id = ?", [trial.id])
                conn.execute("DELETE FROM outbox WHERE event_id IN (SELECT id FROM events"
                             " WHERE trial_id = ?)", [trial.id])
                conn.execute("DELETE FROM events WHERE trial_id = ?", [trial.id])
            return
        conn.execute("PRAGMA foreign_keys = OFF")  # the trial first: its stages outlive it
        try:
            with self.store.transaction():
                conn.execute("DELETE FROM trials WHERE id = ?", [trial.id])
            assert_counts_true(self.store, "orphaned stages")
            with self.store.transaction():
                conn.execute("DELETE FROM stages WHERE trial_id = ?", [trial.id])
                conn.execute("DELETE FROM deployments WHERE trial_id = ?", [trial.id])
        finally:
            conn.execute("PRAGMA foreign_keys = ON")


OPERATIONS = {  # name -> weight
    "discover": 6, "import_dead": 1, "claim": 8, "finish": 10, "retry": 3, "skip": 2,
    "pause": 2, "resume": 2, "cancel": 1, "deploy": 2, "end_deployment": 2, "rolled_back": 1,
    "behind_the_back": 1, "delete": 1,
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_count_tables_equal_a_group_by_after_every_operation(tmp_path: Path, write_config,
                                                             seed: int) -> None:
    config = write_config({"optuna": {"storage": "sqlite:///o.db"}, "state_db": "p.db",
                           "retry": {"delays": [5]}, "stages": STAGES})
    store = Store(config.state_db_path)
    walk = Walk(store, config, random.Random(seed))
    names, weights = list(OPERATIONS), list(OPERATIONS.values())
    done: dict[str, int] = dict.fromkeys(names, 0)
    for step in range(400):
        name = walk.rng.choices(names, weights)[0]
        walk.now += walk.rng.choice([0.0, 1.0, 10.0])
        done[name] += walk.step(name)
        assert_counts_true(store, f"step {step}: {name}")
    # The walk went through every kind of change, dead trials with pending stages included.
    assert all(done.values()), done
    assert any(dead for (_, _, dead) in kept(store)[1])
    assert observe.stage_durations(store) and observe.attempt_outcomes(store)


def build_before_counts(path: Path, monkeypatch: pytest.MonkeyPatch, config: Any) -> None:
    """A state DB at migration m009 holding trials in every kind of state, made by the store."""
    before = schema.MIGRATIONS[:schema.MIGRATIONS.index(schema.m010_counts)]
    with monkeypatch.context() as patch:
        patch.setattr(schema, "MIGRATIONS", before)
        store = Store(path)
        walk = Walk(store, config, random.Random(5))
        for _ in range(30):
            walk.discover()
        walk.import_dead()
        for name in ["claim", "finish"] * 40 + ["cancel", "pause", "deploy"] * 3:
            walk.step(name)
        assert {"trial_counts", "event_counts"}.isdisjoint(store.db.table_names())
        store.close()


def test_migrating_a_db_with_rows_seeds_the_counts(tmp_path: Path, write_config,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config({"optuna": {"storage": "sqlite:///o.db"}, "state_db": "p.db",
                           "stages": STAGES})
    build_before_counts(config.state_db_path, monkeypatch, config)
    store = Store(config.state_db_path)  # applies m010
    assert "m010_counts" in schema.applied_names(store.conn)
    trials, stages = scanned(store)
    assert sum(trials.values()) > 30 and len(trials) >= 4
    assert any(dead for (_, _, dead) in stages)  # rejected trials with pending stages
    assert observe.stage_durations(store) and observe.attempt_outcomes(store)
    assert_counts_true(store, "seeded")
    walk = Walk(store, config, random.Random(6))  # and kept from there on
    for name in ["discover", "claim", "finish", "retry"] * 10:
        walk.step(name)
        assert_counts_true(store, name)


def test_status_reads_the_count_tables_not_the_rows(tmp_path: Path, write_config) -> None:
    config = write_config({"optuna": {"storage": "sqlite:///o.db"}, "state_db": "p.db",
                           "stages": STAGES})
    store = Store(config.state_db_path)
    walk = Walk(store, config, random.Random(7))
    for _ in range(5):
        walk.discover()
        walk.import_dead()
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    trials, stages = store.trial_counts(), store.stage_counts()
    assert [sql for sql in seen if "FROM trials" in sql or "FROM stages" in sql] == []
    pending = len(store.list_trials(TrialStatus.PENDING.value))
    assert trials == {"pending": pending, "rejected": 5}
    # The imported rejected trials' pending stages are not waiting work.
    assert stages["stress"] == {"pending": pending}
    assert stages["backtest"] == {"pending": pending, "rejected": 5}


def test_durations_fall_in_the_buckets_metrics_names(tmp_path: Path) -> None:
    """Each bound of observe.DURATION_BUCKETS, hit exactly and just missed, lands in the same
    bucket as the plain SQL puts it (the migration spells the bounds out)."""
    store = Store(tmp_path / "p.db")
    durations = [d for b in observe.DURATION_BUCKETS for d in (b, b + 0.001)] + [0.0, 1e6]
    with store.transaction() as conn:
        for number, d in enumerate(durations):
            trial_id = store.add_trial({"study": "s", "number": number},
                                       [("backtest", StageStatus.PENDING)], 0, 1.0)
            conn.execute("UPDATE stages SET status = 'passed', started_at = 100.0,"
                         " finished_at = ? WHERE trial_id = ?", [100.0 + d, trial_id])
    cumulative, _, count = observe.stage_durations(store)["backtest"]
    assert count == len(durations)
    assert cumulative[:3] == [2, 4, 6]  # <= 0.1: 0.0 and 0.1; <= 0.5: + 0.101 and 0.5; ...
    assert_metrics_true(store, "bounds")


def test_the_migration_spells_out_todays_dead_statuses_and_duration_buckets() -> None:
    """The triggers hold these as literals (a migration is history): changing either in the
    code needs a new migration, and this test says so."""
    assert schema_counts.DEAD == DEAD
    assert schema_counts.BOUNDS == observe.DURATION_BUCKETS
