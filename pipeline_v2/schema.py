"""The state DB's schema as sqlite-utils migrations. Append new migrations; never edit old ones.

sqlite-utils is imported only to apply pending migrations: importing it pulls pandas and numpy
when they are installed, and a read-only command on an up-to-date DB needs neither.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

MIGRATION_SET = "pipeline_v2"
MIGRATIONS_TABLE = "_sqlite_migrations"  # sqlite-utils' own bookkeeping table
Migration = Callable[["Database"], None]
MIGRATIONS: list[Migration] = []


def migrations() -> Callable[[Migration], Migration]:
    """`@migrations()`: register a migration, in order (the shape of sqlite-utils' decorator)."""

    def register(fn: Migration) -> Migration:
        MIGRATIONS.append(fn)
        return fn

    return register


def migration_set() -> Migrations:
    """The sqlite-utils migration set, built on demand."""
    from sqlite_utils.migrations import Migrations

    found = Migrations(MIGRATION_SET)
    for fn in MIGRATIONS:
        found()(fn)
    return found


def applied_names(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations applied to this DB, oldest first (read without sqlite-utils)."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                          [MIGRATIONS_TABLE]).fetchone()
    if exists is None:
        return []
    rows = conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ?"
                        " ORDER BY rowid", [MIGRATION_SET]).fetchall()
    return [row[0] for row in rows]


@migrations()
def m001_trials_and_stages(db: Database) -> None:
    """Trials, their stages, health and settings."""
    db.executescript(
        """
        CREATE TABLE trials (
            id INTEGER PRIMARY KEY,
            study TEXT NOT NULL,
            study_id INTEGER NOT NULL DEFAULT 0,      -- Optuna's id (SQLite may reuse it)
            generation INTEGER NOT NULL DEFAULT 0,    -- bumped when the study is re-created
            trial_number INTEGER NOT NULL,
            optuna_trial_id INTEGER,
            status TEXT NOT NULL,
            stage_pos INTEGER NOT NULL DEFAULT 0,     -- position of the current stage
            due_at REAL,       -- when the current stage may start; NULL: nothing to start
            value REAL,
            "values" TEXT,                            -- JSON list, multi-objective
            params TEXT NOT NULL DEFAULT '{}',
            user_attrs TEXT NOT NULL DEFAULT '{}',
            constraints TEXT,
            datetime_complete TEXT,
            model_dir TEXT NOT NULL DEFAULT '',
            flags TEXT NOT NULL DEFAULT '[]',
            reason TEXT,
            paused_from TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (study, generation, trial_number)
        );
        CREATE INDEX trials_status ON trials (status);
        CREATE INDEX trials_due ON trials (due_at, id) WHERE due_at IS NOT NULL;
        CREATE TABLE stages (
            id INTEGER PRIMARY KEY,
            trial_id INTEGER NOT NULL REFERENCES trials (id),
            stage_name TEXT NOT NULL,
            position INTEGER NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            interruptions INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            started_at REAL,
            finished_at REAL,
            results TEXT,
            error_message TEXT,
            error_traceback TEXT,
            reason TEXT,
            updated_at REAL NOT NULL,
            UNIQUE (trial_id, stage_name)
        );
        CREATE INDEX stages_status ON stages (status);
        CREATE UNIQUE INDEX stages_position ON stages (trial_id, position);
        CREATE TABLE health (
            component TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            message TEXT,
            details TEXT,
            checked_at REAL NOT NULL
        );
        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT);
        """
    )


@migrations()
def m002_events_outbox_cursors(db: Database) -> None:
    """The events audit trail, the notification outbox and discovery cursors."""
    db.executescript(
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            trial_id INTEGER,
            stage TEXT,
            kind TEXT NOT NULL,
            old_status TEXT,
            new_status TEXT,
            message TEXT,
            data TEXT
        );
        CREATE INDEX events_trial ON events (trial_id, id);
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            event_id INTEGER NOT NULL REFERENCES events (id),
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error TEXT,
            delivered_at REAL
        );
        CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
        CREATE TABLE cursors (
            storage TEXT NOT NULL,
            study TEXT NOT NULL,
            study_id INTEGER NOT NULL,
            generation INTEGER NOT NULL DEFAULT 0,
            fingerprint TEXT,                     -- the study's first trial: id and start time
            max_trial_id INTEGER NOT NULL DEFAULT -1,
            lag_trial_id INTEGER NOT NULL DEFAULT -1,
            open_ids TEXT NOT NULL DEFAULT '[]',
            updated_at REAL NOT NULL,
            PRIMARY KEY (storage, study)
        );
        """
    )


@migrations()
def m003_deployments(db: Database) -> None:
    """Supervised paper-trading deployments."""
    db.executescript(
        """
        CREATE TABLE deployments (
            id INTEGER PRIMARY KEY,
            trial_id INTEGER NOT NULL REFERENCES trials (id),
            status TEXT NOT NULL,
            run_dir TEXT NOT NULL,
            pid INTEGER,
            create_time REAL,
            boot_id TEXT,
            restarts INTEGER NOT NULL DEFAULT 0,
            crash_times TEXT NOT NULL DEFAULT '[]',
            last_exit INTEGER,
            last_heartbeat REAL,
            metrics TEXT,
            started_at REAL,          -- first start: evaluate_after counts from here
            spawned_at REAL,          -- this process's start
            next_start_at REAL,       -- backoff: when to start; stopping: when to SIGKILL
            reason TEXT,
            updated_at REAL NOT NULL
        );
        CREATE INDEX deployments_trial ON deployments (trial_id);
        CREATE INDEX deployments_status ON deployments (status);
        """
    )


@migrations()
def m004_deployments_kill_at(db: Database) -> None:
    """A stopping trader's SIGKILL deadline gets its own column (was `next_start_at`)."""
    db.executescript(
        """
        ALTER TABLE deployments ADD COLUMN kill_at REAL;  -- stopping: when to SIGKILL
        UPDATE deployments SET kill_at = next_start_at, next_start_at = NULL
            WHERE status = 'stopping';
        """
    )


@migrations()
def m005_one_live_deployment_per_trial(db: Database) -> None:
    """One live deployment per trial, enforced; older versions could leave two: keep the newest."""
    db.executescript(
        """
        UPDATE deployments SET status = 'stopped',
            reason = 'superseded: a newer deployment of this trial was live (migration 005)'
        WHERE status IN ('starting', 'running', 'stopping', 'backoff', 'crashed')
          AND id < (SELECT MAX(d.id) FROM deployments d WHERE d.trial_id = deployments.trial_id
                    AND d.status IN ('starting', 'running', 'stopping', 'backoff', 'crashed'));
        CREATE UNIQUE INDEX deployments_one_live ON deployments (trial_id)
            WHERE status IN ('starting', 'running', 'stopping', 'backoff', 'crashed');
        """
    )


@migrations()
def m006_pins_and_handovers(db: Database) -> None:
    """Pins (deployed by hand) and handovers (a replacement proves it starts first)."""
    db.executescript(
        """
        -- deployed by hand: automatic promotion never displaces it until it is stopped by hand
        ALTER TABLE trials ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
        -- the trial this deployment takes over from once it has proven it starts
        ALTER TABLE deployments ADD COLUMN replaces INTEGER;
        """
    )


@migrations()
def m007_stage_processes(db: Database) -> None:
    """The process group an attempt runs in (a command's, or its worker's), written right after
    its spawn, so a daemon started after a crash kills what is left before requeueing."""
    db.executescript(
        """
        ALTER TABLE stages ADD COLUMN proc_pid INTEGER;
        ALTER TABLE stages ADD COLUMN proc_create_time REAL;
        ALTER TABLE stages ADD COLUMN proc_boot_id TEXT;
        """
    )


@migrations()
def m008_perf_indexes(db: Database) -> None:
    """Stage counts by (name, status) read from an index alone; passed trials by value."""
    db.executescript(
        """
        CREATE INDEX stages_name_status ON stages (stage_name, status, trial_id);
        CREATE INDEX trials_status_value ON trials (status, value);
        """
    )


@migrations()
def m009_browse_indexes(db: Database) -> None:
    """Indexes for the dashboard: filter and sort 100,000 trials, the retry queue."""
    db.executescript(
        """
        CREATE INDEX trials_study ON trials (study, id);
        CREATE INDEX trials_value ON trials (value);
        CREATE INDEX trials_updated ON trials (updated_at);
        CREATE INDEX trials_stage_pos ON trials (stage_pos, id);
        CREATE INDEX stages_retry ON stages (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
        """
    )



@migrations()
def m010_status_counts(db: Database) -> None:
    """Trials per status and stages per (name, status) kept by triggers: `status`, the
    dashboard and /metrics read a handful of rows instead of grouping every trial.

    `stage_counts.dead` is 1 only for the pending stages of a rejected, failed or cancelled
    trial: they will never run, so they are not work waiting (status shows dead = 0 rows).
    A trial entering or leaving those statuses moves its pending stages between the two.
    Seeded here from the rows already in the DB, in the migration's transaction.
    """
    dead = "('cancelled', 'failed', 'rejected')"  # queries.DEAD_TRIAL when this was written

    def is_dead(row: str) -> str:  # 1 when this stage row is a pending stage of a dead trial
        return (f"({row}.status = 'pending' AND EXISTS (SELECT 1 FROM trials"
                f" WHERE id = {row}.trial_id AND status IN {dead}))")

    def add_stage(row: str) -> str:
        return (f"INSERT INTO stage_counts (stage_name, status, dead, n) VALUES"
                f" ({row}.stage_name, {row}.status, {is_dead(row)}, 1)"
                " ON CONFLICT (stage_name, status, dead) DO UPDATE SET n = n + 1;")

    def drop_stage(row: str) -> str:
        return (f"UPDATE stage_counts SET n = n - 1 WHERE stage_name = {row}.stage_name"
                f" AND status = {row}.status AND dead = {is_dead(row)};")

    def move_pending(trial: str, was: str, now: str) -> str:
        """The trial's pending stages leave the `was` bucket for the `now` one."""
        return (
            "UPDATE stage_counts SET n = n - (SELECT COUNT(*) FROM stages s"
            f" WHERE s.trial_id = {trial}.id AND s.status = 'pending'"
            " AND s.stage_name = stage_counts.stage_name)"
            f" WHERE status = 'pending' AND dead = {was} AND stage_name IN"
            f" (SELECT stage_name FROM stages WHERE trial_id = {trial}.id AND status = 'pending');"
            " INSERT INTO stage_counts (stage_name, status, dead, n)"
            f" SELECT stage_name, 'pending', {now}, COUNT(*) FROM stages"
            f" WHERE trial_id = {trial}.id AND status = 'pending' GROUP BY stage_name"
            " ON CONFLICT (stage_name, status, dead) DO UPDATE SET n = n + excluded.n;"
        )

    db.executescript(
        f"""
        CREATE TABLE trial_counts (
            status TEXT PRIMARY KEY,
            n INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE stage_counts (
            stage_name TEXT NOT NULL,
            status TEXT NOT NULL,
            dead INTEGER NOT NULL,     -- 1: pending behind a rejected/failed/cancelled trial
            n INTEGER NOT NULL,
            PRIMARY KEY (stage_name, status, dead)
        ) WITHOUT ROWID;
        INSERT INTO trial_counts (status, n) SELECT status, COUNT(*) FROM trials GROUP BY 1;
        INSERT INTO stage_counts (stage_name, status, dead, n)
            SELECT s.stage_name, s.status,
                   COALESCE(s.status = 'pending' AND t.status IN {dead}, 0), COUNT(*)
            FROM stages s LEFT JOIN trials t ON t.id = s.trial_id GROUP BY 1, 2, 3;

        CREATE TRIGGER trial_counts_insert AFTER INSERT ON trials BEGIN
            INSERT INTO trial_counts (status, n) VALUES (new.status, 1)
                ON CONFLICT (status) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER trial_counts_delete AFTER DELETE ON trials BEGIN
            UPDATE trial_counts SET n = n - 1 WHERE status = old.status;
        END;
        CREATE TRIGGER trial_counts_update AFTER UPDATE OF status ON trials
        WHEN old.status IS NOT new.status BEGIN
            UPDATE trial_counts SET n = n - 1 WHERE status = old.status;
            INSERT INTO trial_counts (status, n) VALUES (new.status, 1)
                ON CONFLICT (status) DO UPDATE SET n = n + 1;
        END;
        -- A trial dying (or coming back by a retry) moves its pending stages across.
        CREATE TRIGGER stage_counts_trial_dies AFTER UPDATE OF status ON trials
        WHEN old.status NOT IN {dead} AND new.status IN {dead} BEGIN
            {move_pending("new", "0", "1")}
        END;
        CREATE TRIGGER stage_counts_trial_revives AFTER UPDATE OF status ON trials
        WHEN old.status IN {dead} AND new.status NOT IN {dead} BEGIN
            {move_pending("new", "1", "0")}
        END;
        -- Stages outliving their dead trial (only with foreign keys off) count as live again,
        -- as a plain join would count them.
        CREATE TRIGGER stage_counts_trial_deleted AFTER DELETE ON trials
        WHEN old.status IN {dead} BEGIN
            {move_pending("old", "1", "0")}
        END;

        CREATE TRIGGER stage_counts_insert AFTER INSERT ON stages BEGIN
            {add_stage("new")}
        END;
        CREATE TRIGGER stage_counts_delete AFTER DELETE ON stages BEGIN
            {drop_stage("old")}
        END;
        CREATE TRIGGER stage_counts_update AFTER UPDATE OF status, stage_name, trial_id ON stages
        WHEN old.status IS NOT new.status OR old.stage_name IS NOT new.stage_name
             OR old.trial_id IS NOT new.trial_id BEGIN
            {drop_stage("old")}
            {add_stage("new")}
        END;
        """
    )



@migrations()
def m011_metric_counts(db: Database) -> None:
    """What /metrics reports, kept by triggers and seeded here: events by (kind, stage, old
    status, new status) and, per stage, a histogram of its rows' final-attempt durations.
    A scrape then reads a few hundred rows instead of every event and every stage.

    NULL key columns are stored as '' (NULLs never conflict in a key). A stage row counts in
    the histogram while it is passed, rejected or failed with both times set; `le` is the
    bucket's upper bound (observe.DURATION_BUCKETS, then +Inf as 9e999).
    """
    event_key = ("{r}.kind, COALESCE({r}.stage, ''), COALESCE({r}.old_status, ''),"
                 " COALESCE({r}.new_status, '')")

    def add_event(row: str) -> str:
        return ("INSERT INTO event_counts (kind, stage, old_status, new_status, n) VALUES"
                f" ({event_key.format(r=row)}, 1)"
                " ON CONFLICT (kind, stage, old_status, new_status) DO UPDATE SET n = n + 1;")

    def drop_event(row: str) -> str:
        return (f"UPDATE event_counts SET n = n - 1 WHERE (kind, stage, old_status, new_status)"
                f" = ({event_key.format(r=row)});")

    def ran(row: str) -> str:  # the row is a finished attempt with a duration
        return (f"({row}.status IN ('failed', 'passed', 'rejected')"
                f" AND {row}.started_at IS NOT NULL AND {row}.finished_at IS NOT NULL)")

    def bucket(d: str) -> str:
        bounds = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
        cases = " ".join(f"WHEN {d} <= {b!r} THEN {b!r}" for b in bounds)
        return f"CASE {cases} ELSE 9e999 END"

    def add_run(row: str) -> str:
        d = f"({row}.finished_at - {row}.started_at)"
        return ("INSERT INTO stage_durations (stage_name, le, n, total)"
                f" SELECT {row}.stage_name, {bucket(d)}, 1, {d} WHERE {ran(row)}"
                " ON CONFLICT (stage_name, le) DO UPDATE SET n = n + 1,"
                " total = total + excluded.total;")

    def drop_run(row: str) -> str:
        d = f"({row}.finished_at - {row}.started_at)"
        return (f"UPDATE stage_durations SET n = n - 1, total = total - {d}"
                f" WHERE {ran(row)} AND stage_name = {row}.stage_name AND le = {bucket(d)};")

    db.executescript(
        f"""
        CREATE TABLE event_counts (
            kind TEXT NOT NULL,
            stage TEXT NOT NULL,          -- '' for none
            old_status TEXT NOT NULL,     -- '' for none
            new_status TEXT NOT NULL,     -- '' for none
            n INTEGER NOT NULL,
            PRIMARY KEY (kind, stage, old_status, new_status)
        ) WITHOUT ROWID;
        CREATE TABLE stage_durations (
            stage_name TEXT NOT NULL,
            le REAL NOT NULL,             -- the bucket's upper bound (9e999: +Inf)
            n INTEGER NOT NULL,
            total REAL NOT NULL,          -- sum of the durations in this bucket, seconds
            PRIMARY KEY (stage_name, le)
        ) WITHOUT ROWID;
        INSERT INTO event_counts (kind, stage, old_status, new_status, n)
            SELECT {event_key.format(r="events")}, COUNT(*) FROM events GROUP BY 1, 2, 3, 4;
        INSERT INTO stage_durations (stage_name, le, n, total)
            SELECT stage_name, {bucket("d")}, COUNT(*), SUM(d) FROM (SELECT stage_name,
                finished_at - started_at AS d FROM stages WHERE {ran("stages")}) GROUP BY 1, 2;

        CREATE TRIGGER event_counts_insert AFTER INSERT ON events BEGIN
            {add_event("new")}
        END;
        CREATE TRIGGER event_counts_delete AFTER DELETE ON events BEGIN
            {drop_event("old")}
        END;
        CREATE TRIGGER event_counts_update AFTER UPDATE OF kind, stage, old_status, new_status
        ON events BEGIN
            {drop_event("old")}
            {add_event("new")}
        END;

        CREATE TRIGGER stage_durations_insert AFTER INSERT ON stages WHEN {ran("new")} BEGIN
            {add_run("new")}
        END;
        CREATE TRIGGER stage_durations_delete AFTER DELETE ON stages WHEN {ran("old")} BEGIN
            {drop_run("old")}
        END;
        CREATE TRIGGER stage_durations_update
        AFTER UPDATE OF status, started_at, finished_at, stage_name ON stages
        WHEN {ran("old")} OR {ran("new")} BEGIN
            {drop_run("old")}
            {add_run("new")}
        END;
        """
    )


def known_migrations() -> list[str]:
    """Every migration this version knows, in order."""
    return [fn.__name__ for fn in MIGRATIONS]
