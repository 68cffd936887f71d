"""The state DB's schema as sqlite-utils migrations. Append new migrations; never edit old ones."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATION_SET = "pipeline_v2"
migrations = Migrations(MIGRATION_SET)


@migrations()
def m001_trials_and_stages(db: Database) -> None:
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


def known_migrations() -> list[str]:
    """Every migration this version knows, in order."""
    return [m.name for m in migrations.pending(Database(memory=True))]
