"""The state DB's schema as sqlite-utils migrations. Append new migrations; never edit old ones.

sqlite-utils is imported only to apply pending migrations: importing it pulls pandas and numpy
when they are installed, and a read-only command on an up-to-date DB needs neither.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline_v2 import schema_counts

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
def m010_counts(db: Database) -> None:
    """Count tables kept by triggers, seeded from the rows already here (schema_counts.py):
    `status`, the dashboard and /metrics read a few rows instead of grouping every trial,
    stage and event."""
    db.executescript(schema_counts.M010)


def known_migrations() -> list[str]:
    """Every migration this version knows, in order."""
    return [fn.__name__ for fn in MIGRATIONS]
