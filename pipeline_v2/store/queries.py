"""The queries the daemon runs every turn and `status` runs every call, in one place.

Each must read through an index and be bounded, whatever the number of trials:
tests/test_query_plans.py runs EXPLAIN QUERY PLAN on each against a populated state DB.
"""

from __future__ import annotations

from pipeline_v2.models import StageStatus, TrialStatus
from pipeline_v2.store.base import sql_in

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
TRIAL_COUNTS = "SELECT status, COUNT(*) FROM trials GROUP BY 1"
# Counted from the (stage_name, status) index; then the pending stages behind a dead trial
# are taken off: they will never run, so they are not work waiting.
STAGE_COUNTS = "SELECT stage_name, status, COUNT(*) FROM stages GROUP BY 1, 2"
DEAD_PENDING_STAGES = (
    "SELECT s.stage_name, COUNT(*) FROM trials t JOIN stages s ON s.trial_id = t.id"
    f" WHERE t.status IN {sql_in(DEAD_TRIAL)} AND s.status = '{StageStatus.PENDING.value}'"
    " GROUP BY 1"
)
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
    "dead_pending_stages": (DEAD_PENDING_STAGES, ()),
    "health": (HEALTH, ()),
    "setting": (SETTING, ("paused_all",)),
    "trials_page": (TRIALS_PAGE.format(where=""), (0, 1000)),
    "trials_page_of_status": (TRIALS_PAGE.format(where=" AND status = ?"), (0, "passed", 1000)),
    "due_notifications": (DUE_NOTIFICATIONS, (1e12, 20)),
    "next_notification_time": (NEXT_NOTIFICATION_TIME, ()),
}
