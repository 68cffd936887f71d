"""Trials, stage runs and deployments: their statuses and the one table of allowed transitions."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class TrialStatus(str, Enum):
    """Where a trial is in the pipeline."""

    PENDING = "pending"
    PROCESSING = "processing"
    PASSED = "passed"
    DEPLOYED = "deployed"
    VALIDATED = "validated"
    RETIRED = "retired"
    REJECTED = "rejected"
    FAILED = "failed"
    PAUSED = "paused"
    CANCELLED = "cancelled"


class StageStatus(str, Enum):
    """Where one stage of one trial is."""

    PENDING = "pending"
    RUNNING = "running"
    PASSED = "passed"
    REJECTED = "rejected"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class DeploymentStatus(str, Enum):
    """Where a supervised paper-trading process is."""

    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    CRASHED = "crashed"
    BACKOFF = "backoff"
    FATAL = "fatal"
    STOPPING = "stopping"
    STOPPED = "stopped"


T, S, D = TrialStatus, StageStatus, DeploymentStatus

# Statuses a trial may be paused from (and resumed back to).
PAUSABLE = frozenset({T.PENDING, T.PROCESSING, T.PASSED, T.DEPLOYED})

# The only status changes the store accepts. Anything else is a bug or a lost race.
TRANSITIONS: dict[type[Enum], dict[Enum, frozenset[Enum]]] = {
    TrialStatus: {
        T.PENDING: frozenset({T.PROCESSING, T.PAUSED, T.CANCELLED}),
        T.PROCESSING: frozenset({T.PASSED, T.REJECTED, T.FAILED, T.PAUSED, T.CANCELLED}),
        T.PASSED: frozenset({T.DEPLOYED, T.RETIRED, T.PROCESSING, T.PAUSED, T.CANCELLED}),
        T.DEPLOYED: frozenset({T.VALIDATED, T.RETIRED, T.PASSED, T.FAILED, T.PAUSED, T.CANCELLED}),
        T.VALIDATED: frozenset({T.RETIRED}),
        # RETIRED / FAILED -> DEPLOYED: a redeploy; -> PASSED: a retried deploy stage.
        T.RETIRED: frozenset({T.DEPLOYED, T.PASSED}),
        T.REJECTED: frozenset({T.PROCESSING, T.CANCELLED}),
        T.FAILED: frozenset({T.PROCESSING, T.PASSED, T.DEPLOYED, T.CANCELLED}),
        T.PAUSED: PAUSABLE | {T.CANCELLED},
        T.CANCELLED: frozenset(),
    },
    StageStatus: {
        S.PENDING: frozenset({S.RUNNING, S.SKIPPED, S.CANCELLED}),
        # RUNNING -> PENDING: an error to retry, or an interrupted attempt.
        S.RUNNING: frozenset({S.PASSED, S.REJECTED, S.FAILED, S.PENDING, S.CANCELLED}),
        # PASSED / CANCELLED -> PENDING: only a deploy stage, when its trial is redeployed.
        S.PASSED: frozenset({S.PENDING}),
        S.REJECTED: frozenset({S.PENDING, S.SKIPPED}),
        S.FAILED: frozenset({S.PENDING, S.SKIPPED}),
        S.SKIPPED: frozenset({S.PENDING}),
        S.CANCELLED: frozenset({S.PENDING}),
    },
    DeploymentStatus: {
        D.STARTING: frozenset({D.RUNNING, D.EXITED, D.CRASHED, D.STOPPING, D.STOPPED}),
        D.RUNNING: frozenset({D.EXITED, D.CRASHED, D.STOPPING}),
        D.EXITED: frozenset({D.STOPPED, D.STARTING}),
        D.CRASHED: frozenset({D.BACKOFF, D.FATAL, D.STOPPED}),
        D.BACKOFF: frozenset({D.STARTING, D.STOPPED}),
        D.FATAL: frozenset({D.STARTING, D.STOPPED}),
        D.STOPPING: frozenset({D.STOPPED, D.CRASHED, D.EXITED}),
        D.STOPPED: frozenset({D.STARTING}),
    },
}

FINAL_STAGE = frozenset({S.PASSED, S.REJECTED, S.FAILED, S.SKIPPED, S.CANCELLED})
LIVE_DEPLOYMENT = frozenset({D.STARTING, D.RUNNING, D.STOPPING})
ACTIVE_DEPLOYMENT = LIVE_DEPLOYMENT | {D.BACKOFF}


def is_allowed(old: Enum, new: Enum) -> bool:
    """True when `old -> new` is in the transition table."""
    table = TRANSITIONS[type(old)]
    return new in table[old]


@dataclass(frozen=True)
class Trial:
    """One Optuna trial as the pipeline tracks it."""

    id: int
    study: str
    number: int
    status: TrialStatus
    study_id: int = 0
    generation: int = 0
    optuna_trial_id: int = 0
    value: float | None = None
    values: list[float | None] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    model_dir: str = ""
    flags: list[str] = field(default_factory=list)
    reason: str | None = None
    paused_from: str | None = None
    pinned: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def ref(self) -> str:
        """The `study:number` reference users type."""
        return f"{self.study}:{self.number}"


@dataclass(frozen=True, kw_only=True)
class AttemptRecord:
    """What attempts leave on a stage row: the retry schedule, results, error and reason.

    Shared by `StageRun` (the row) and `plan.StageUpdate` (the change decided for it).
    """

    interruptions: int = 0
    next_attempt_at: float | None = None
    results: dict[str, Any] | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class StageRun(AttemptRecord):
    """One stage of one trial: its attempts, schedule and result."""

    id: int
    trial_id: int
    name: str
    position: int
    status: StageStatus
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True)
class Deployment:
    """A supervised paper-trading process for one trial."""

    id: int
    trial_id: int
    status: DeploymentStatus
    run_dir: str
    pid: int | None = None
    create_time: float | None = None
    boot_id: str | None = None
    restarts: int = 0
    crash_times: list[float] = field(default_factory=list)
    last_exit: int | None = None
    last_heartbeat: float | None = None
    metrics: dict[str, Any] | None = None
    started_at: float | None = None
    spawned_at: float | None = None
    next_start_at: float | None = None  # backoff: when to start again
    kill_at: float | None = None  # stopping: when the grace is over and SIGKILL follows
    reason: str | None = None
    replaces: int | None = None  # trial id handed over from at this one's first heartbeat
