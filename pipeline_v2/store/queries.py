"""The queries the daemon runs every turn and `status` runs every call, in one place.

Each must read through an index and be bounded, whatever the number of trials:
tests/test_query_plans.py runs EXPLAIN QUERY PLAN on each against a populated state DB.
"""

from __future__ import annotations

from pipeline_v2.models import StageStatus, TrialStatus

# A trial in one of these never runs another stage.
DEAD_TRIAL = (TrialStatus.REJECTED, TrialStatus.FAILED, TrialStatus.CANCELLED)

DUE_ATTEMPTS = (
    "SELECT s.id, s.trial_id, s.stage_name, s.attempts FROM trials t"
    " JOIN stages s ON s.trial_id = t.id AND s.position = t.stage_pos"
    " WHERE t.due_at IS NOT NULL AND t.due_at <= ? ORDER BY t.due_at, t.id LIMIT ?"
)
NEXT_ATTEMPT_TIME = "SELECT MIN(due_at) FROM trials WHERE due_at IS NOT NULL"
HAS_WAITING_WORK = "SELECT 1 FROM trials WHERE due_at IS NOT NULL LIMIT 1"
RUNNING_STAGES = "SELECT * FROM stages WHERE status = ?"
# Both read count tables that triggers keep current (migration m010): a few rows, whatever
# the number of trials. The pending stages of a dead trial sit in `dead = 1` rows: they will
# never run, so they are not work waiting.
TRIAL_COUNTS = "SELECT status, n FROM trial_counts WHERE n > 0"
STAGE_COUNTS = "SELECT stage_name, status, n FROM stage_counts WHERE dead = 0 AND n > 0"
COUNT_TRIALS = "SELECT COALESCE(SUM(n), 0) FROM trial_counts"
COUNT_TRIALS_OF_STATUS = "SELECT COALESCE(SUM(n), 0) FROM trial_counts WHERE status = ?"
HEALTH = "SELECT * FROM health ORDER BY component"
SETTING = "SELECT value FROM settings WHERE key = ?"
TRIALS_PAGE = "SELECT * FROM trials WHERE id > ?{where} ORDER BY id LIMIT ?"
DUE_NOTIFICATIONS = (
    "SELECT o.id AS outbox_id, o.attempts, e.*, t.study, t.trial_number FROM outbox o"
    " JOIN events e ON e.id = o.event_id LEFT JOIN trials t ON t.id = e.trial_id"
    " WHERE o.status = 'pending' AND o.next_attempt_at <= ? ORDER BY o.id LIMIT ?"
)
NEXT_NOTIFICATION_TIME = "SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending'"

# name -> (SQL, example parameters): what the query-plan test runs.
PER_TURN: dict[str, tuple[str, tuple[object, ...]]] = {
    "due_attempts": (DUE_ATTEMPTS, (1e12, 10)),
    "next_attempt_time": (NEXT_ATTEMPT_TIME, ()),
    "has_waiting_work": (HAS_WAITING_WORK, ()),
    "running_stages": (RUNNING_STAGES, (StageStatus.RUNNING.value,)),
    "trial_counts": (TRIAL_COUNTS, ()),
    "stage_counts": (STAGE_COUNTS, ()),
    "count_trials": (COUNT_TRIALS, ()),
    "count_trials_of_status": (COUNT_TRIALS_OF_STATUS, ("passed",)),
    "health": (HEALTH, ()),
    "setting": (SETTING, ("paused_all",)),
    "trials_page": (TRIALS_PAGE.format(where=""), (0, 1000)),
    "trials_page_of_status": (TRIALS_PAGE.format(where=" AND status = ?"), (0, "passed", 1000)),
    "due_notifications": (DUE_NOTIFICATIONS, (1e12, 20)),
    "next_notification_time": (NEXT_NOTIFICATION_TIME, ()),
}
