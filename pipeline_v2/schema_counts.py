"""Migration m010's SQL: count tables kept current by triggers, seeded from existing rows.

Like every migration, this text is history once released: change the counts with a new
migration, never by editing this one.

- `trial_counts`: trials per status.
- `stage_counts`: stage rows per (stage, status, dead). `dead` is 1 only for the pending stages
  of a rejected, failed or cancelled trial: they will never run, so they are not work waiting
  (`status` shows the dead = 0 rows). A trial entering or leaving those statuses moves its
  pending stages between the two.
- `event_counts`: events per (kind, stage, old status, new status); '' stands for NULL (NULLs
  never conflict in a key).
- `stage_durations`: per stage and bucket, the stage rows that are passed, rejected or failed
  with both times set: how many and the sum of their durations. `le` is the bucket's upper
  bound (`store.observe.DURATION_BUCKETS`, then +Inf as 9e999).

Each table's changes go through one trigger per statement kind: a trigger's fixed cost (a
frame per row) is most of what it costs, so the counts share them.
"""

from __future__ import annotations

DEAD = "('cancelled', 'failed', 'rejected')"  # store.queries.DEAD_TRIAL
FINISHED = "('failed', 'passed', 'rejected')"  # a stage row whose duration counts
BOUNDS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)  # observe.DURATION_BUCKETS


def is_dead(row: str) -> str:
    """1 when this stages row is a pending stage of a dead trial."""
    return (f"({row}.status = 'pending' AND EXISTS (SELECT 1 FROM trials"
            f" WHERE id = {row}.trial_id AND status IN {DEAD}))")


def add_stage(row: str) -> str:
    return ("INSERT INTO stage_counts (stage_name, status, dead, n) VALUES"
            f" ({row}.stage_name, {row}.status, {is_dead(row)}, 1)"
            " ON CONFLICT (stage_name, status, dead) DO UPDATE SET n = n + 1;")


def drop_stage(row: str) -> str:
    return (f"UPDATE stage_counts SET n = n - 1 WHERE stage_name = {row}.stage_name"
            f" AND status = {row}.status AND dead = {is_dead(row)};")


def move_pending(trial: str, was: str, now: str, when: str) -> str:
    """When `when` holds, the trial's pending stages leave the `was` bucket for `now`."""
    return (
        "UPDATE stage_counts SET n = n - (SELECT COUNT(*) FROM stages s"
        f" WHERE s.trial_id = {trial}.id AND s.status = 'pending'"
        " AND s.stage_name = stage_counts.stage_name)"
        f" WHERE {when} AND status = 'pending' AND dead = {was} AND stage_name IN"
        f" (SELECT stage_name FROM stages WHERE trial_id = {trial}.id AND status = 'pending');"
        " INSERT INTO stage_counts (stage_name, status, dead, n)"
        f" SELECT stage_name, 'pending', {now}, COUNT(*) FROM stages"
        f" WHERE {when} AND trial_id = {trial}.id AND status = 'pending' GROUP BY stage_name"
        " ON CONFLICT (stage_name, status, dead) DO UPDATE SET n = n + excluded.n;"
    )


def ran(row: str) -> str:
    """The stages row is a finished attempt with a duration."""
    return (f"({row}.status IN {FINISHED} AND {row}.started_at IS NOT NULL"
            f" AND {row}.finished_at IS NOT NULL)")


def bucket(d: str) -> str:
    cases = " ".join(f"WHEN {d} <= {b!r} THEN {b!r}" for b in BOUNDS)
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


EVENT_KEY = ("{r}.kind, COALESCE({r}.stage, ''), COALESCE({r}.old_status, ''),"
             " COALESCE({r}.new_status, '')")


def add_event(row: str) -> str:
    return ("INSERT INTO event_counts (kind, stage, old_status, new_status, n) VALUES"
            f" ({EVENT_KEY.format(r=row)}, 1)"
            " ON CONFLICT (kind, stage, old_status, new_status) DO UPDATE SET n = n + 1;")


def drop_event(row: str) -> str:
    return ("UPDATE event_counts SET n = n - 1 WHERE (kind, stage, old_status, new_status)"
            f" = ({EVENT_KEY.format(r=row)});")


DIES = f"old.status NOT IN {DEAD} AND new.status IN {DEAD}"
REVIVES = f"old.status IN {DEAD} AND new.status NOT IN {DEAD}"

M010 = f"""
CREATE TABLE trial_counts (
    status TEXT PRIMARY KEY,
    n INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE stage_counts (
    stage_name TEXT NOT NULL,
    status TEXT NOT NULL,
    dead INTEGER NOT NULL,        -- 1: pending behind a rejected/failed/cancelled trial
    n INTEGER NOT NULL,
    PRIMARY KEY (stage_name, status, dead)
) WITHOUT ROWID;
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
    total REAL NOT NULL,          -- the sum of the durations in this bucket, seconds
    PRIMARY KEY (stage_name, le)
) WITHOUT ROWID;

INSERT INTO trial_counts (status, n) SELECT status, COUNT(*) FROM trials GROUP BY 1;
INSERT INTO stage_counts (stage_name, status, dead, n)
    SELECT s.stage_name, s.status, COALESCE(s.status = 'pending' AND t.status IN {DEAD}, 0),
           COUNT(*)
    FROM stages s LEFT JOIN trials t ON t.id = s.trial_id GROUP BY 1, 2, 3;
INSERT INTO event_counts (kind, stage, old_status, new_status, n)
    SELECT {EVENT_KEY.format(r="events")}, COUNT(*) FROM events GROUP BY 1, 2, 3, 4;
INSERT INTO stage_durations (stage_name, le, n, total)
    SELECT stage_name, {bucket("d")}, COUNT(*), SUM(d) FROM (SELECT stage_name,
        finished_at - started_at AS d FROM stages WHERE {ran("stages")}) GROUP BY 1, 2;

CREATE TRIGGER counts_trial_insert AFTER INSERT ON trials BEGIN
    INSERT INTO trial_counts (status, n) VALUES (new.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER counts_trial_update AFTER UPDATE OF status ON trials
WHEN old.status IS NOT new.status BEGIN
    UPDATE trial_counts SET n = n - 1 WHERE status = old.status;
    INSERT INTO trial_counts (status, n) VALUES (new.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + 1;
    -- dying (or coming back by a retry), it moves its pending stages across
    {move_pending("new", "0", "1", DIES)}
    {move_pending("new", "1", "0", REVIVES)}
END;
CREATE TRIGGER counts_trial_delete AFTER DELETE ON trials BEGIN
    UPDATE trial_counts SET n = n - 1 WHERE status = old.status;
    -- stages outliving their dead trial (foreign keys off) count as live, as a join would
    {move_pending("old", "1", "0", f"old.status IN {DEAD}")}
END;

CREATE TRIGGER counts_stage_insert AFTER INSERT ON stages BEGIN
    {add_stage("new")}
    {add_run("new")}
END;
CREATE TRIGGER counts_stage_delete AFTER DELETE ON stages BEGIN
    {drop_stage("old")}
    {drop_run("old")}
END;
CREATE TRIGGER counts_stage_update
AFTER UPDATE OF status, stage_name, trial_id, started_at, finished_at ON stages
WHEN old.status IS NOT new.status OR old.stage_name IS NOT new.stage_name
     OR old.trial_id IS NOT new.trial_id OR old.started_at IS NOT new.started_at
     OR old.finished_at IS NOT new.finished_at BEGIN
    {drop_stage("old")}
    {add_stage("new")}
    {drop_run("old")}
    {add_run("new")}
END;

CREATE TRIGGER counts_event_insert AFTER INSERT ON events BEGIN
    {add_event("new")}
END;
CREATE TRIGGER counts_event_delete AFTER DELETE ON events BEGIN
    {drop_event("old")}
END;
CREATE TRIGGER counts_event_update AFTER UPDATE OF kind, stage, old_status, new_status
ON events BEGIN
    {drop_event("old")}
    {add_event("new")}
END;
"""
