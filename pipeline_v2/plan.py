"""Pure decisions: given state, config and `now`, what happens next. No clock, DB or process."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline_v2.config import Config, DeployStageConfig
from pipeline_v2.gates import evaluate_gates
from pipeline_v2.models import FINAL_STAGE, AttemptRecord, StageRun, StageStatus, TrialStatus

# An attempt cut short by a daemon stop is not a failure, but this many in a row are.
MAX_INTERRUPTIONS = 3


@dataclass(frozen=True)
class StageUpdate(AttemptRecord):
    """The decided result of an attempt: the stage's new state and the trial's next step."""

    stage_id: int
    stage: str
    status: StageStatus
    stage_pos: int
    trial_status: TrialStatus | None
    message: str | None = None
    trial_reason: str | None = None
    attempts: int | None = None  # None: keep the count the claim made
    skip: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Outcome:
    """How one stage attempt ended, as reported by a runner."""

    kind: Literal["ok", "reject", "error", "interrupted", "requeue"]
    metrics: dict[str, Any] | None = None
    message: str | None = None
    traceback: str | None = None
    final: bool = False  # an error that retrying cannot heal (bad data, bad parameters)


def initial_stages(
    config: Config,
) -> tuple[list[tuple[str, StageStatus]], int, TrialStatus]:
    """Stage rows for a new trial (disabled ones recorded skipped), its first position, and
    its status: pending, or passed already when nothing stands before the deploy stage."""
    rows = [
        (name, StageStatus.PENDING if stage.enabled else StageStatus.SKIPPED)
        for name, stage in config.stages.items()
    ]
    pos, status, _ = position_after(dict(rows), config)
    return rows, pos, TrialStatus.PASSED if status == TrialStatus.PASSED else TrialStatus.PENDING


def position_after(
    statuses: Mapping[str, StageStatus], config: Config
) -> tuple[int, TrialStatus, tuple[str, ...]]:
    """The current stage position, the trial status its stages imply, and stages to skip.

    A rejected or failed stage ends the trial; the first unfinished stage is current; a pending
    stage that is disabled (or gone from the config) is skipped; reaching a deploy stage (or the
    end) means the trial passed its validation.
    """
    skip: list[str] = []
    for pos, name in enumerate(statuses):
        status = statuses[name]
        if status == StageStatus.REJECTED:
            return pos, TrialStatus.REJECTED, tuple(skip)
        if status == StageStatus.FAILED:
            return pos, TrialStatus.FAILED, tuple(skip)
        if status in FINAL_STAGE:
            continue
        stage = config.stages.get(name)
        if status == StageStatus.PENDING and (stage is None or not stage.enabled):
            skip.append(name)
            continue
        if isinstance(stage, DeployStageConfig):
            return pos, TrialStatus.PASSED, tuple(skip)
        return pos, TrialStatus.PROCESSING, tuple(skip)
    return len(statuses), TrialStatus.PASSED, tuple(skip)


def retry_delay(delays: Sequence[float], attempts: int) -> float:
    """Delay after the `attempts`-th failed attempt; the last delay repeats."""
    return float(delays[min(max(attempts, 1), len(delays)) - 1])


def after_attempt(
    stage: StageRun,
    outcome: Outcome,
    statuses: Mapping[str, StageStatus],
    earlier: Mapping[str, Mapping[str, Any]],
    config: Config,
    now: float,
) -> StageUpdate:
    """Decide what an attempt's outcome means for the stage and the trial.

    `stage.attempts` already counts this attempt (the claim counted it).
    """
    cfg = config.stages[stage.name]
    interruptions = 0
    status, next_at, reason, message = StageStatus.PASSED, None, None, None
    metrics = outcome.metrics
    if outcome.kind == "requeue":  # not the trial's fault (the disk is full): never charged
        return StageUpdate(
            stage.id, stage.name, StageStatus.PENDING, stage.position, None,
            next_attempt_at=now, interruptions=stage.interruptions,
            message=f"attempt {stage.attempts} requeued, not charged: {outcome.message}",
            attempts=stage.attempts - 1,
        )
    if outcome.kind == "interrupted":
        interruptions = stage.interruptions + 1
        if interruptions < MAX_INTERRUPTIONS:
            return StageUpdate(
                stage.id,
                stage.name,
                StageStatus.PENDING,
                stage.position,
                None,
                next_attempt_at=now,
                interruptions=interruptions,
                message=f"attempt {stage.attempts} interrupted ({interruptions} in a row)",
                attempts=stage.attempts - 1,
            )
        outcome = Outcome("error", message=f"interrupted {interruptions} times in a row")
    if outcome.kind == "ok":
        reasons = evaluate_gates(cfg.parsed_gates, metrics or {}, earlier)
        if reasons:
            status, reason = StageStatus.REJECTED, "; ".join(reasons)
        message = reason or "gates passed"
    elif outcome.kind == "reject":
        status, reason = StageStatus.REJECTED, outcome.message or "rejected"
        message = reason
    elif outcome.kind == "error":
        if outcome.final:
            status = StageStatus.FAILED
            message = (f"attempt {stage.attempts}/{cfg.max_attempts} failed, not retried "
                       f"(retrying cannot fix it): {outcome.message}")
        elif stage.attempts >= cfg.max_attempts:
            status = StageStatus.FAILED
            message = f"attempt {stage.attempts}/{cfg.max_attempts} failed: {outcome.message}"
        else:
            status = StageStatus.PENDING
            next_at = now + retry_delay(config.retry_delays(stage.name), stage.attempts)
            message = (
                f"attempt {stage.attempts}/{cfg.max_attempts} failed, retry in "
                f"{next_at - now:g}s: {outcome.message}"
            )
    after = dict(statuses) | {stage.name: status}
    pos, trial_status, skip = position_after(after, config)
    return StageUpdate(
        stage.id,
        stage.name,
        status,
        pos,
        trial_status,
        next_attempt_at=next_at,
        interruptions=0 if outcome.kind != "error" else interruptions,
        results=metrics if outcome.kind == "ok" else None,
        error_message=outcome.message if outcome.kind == "error" else None,
        error_traceback=outcome.traceback,
        reason=reason,
        message=message,
        trial_reason=reason
        if status == StageStatus.REJECTED
        else (f"{stage.name}: {outcome.message}" if status == StageStatus.FAILED else None),
        skip=skip,
    )


def attempts_to_start(
    due: Sequence[Any], running: int, workers: int, *, paused: bool, stopping: bool
) -> list[Any]:
    """The due attempts that may start now: none when paused or stopping, else up to capacity."""
    if paused or stopping:
        return []
    return list(due[: max(0, workers - running)])


def next_wake(now: float, *times: float | None, cap: float = 1.0) -> float:
    """Seconds to wait: until the earliest due time, never more than `cap`, never negative."""
    due = [t for t in times if t is not None]
    wait = min([cap, *(t - now for t in due)])
    return max(0.0, wait)


# ---------------------------------------------------------------------------------------------
# Deployments


@dataclass(frozen=True)
class Promotion:
    """Deployments to start (free slots) and to replace (old trial -> new trial)."""

    start: tuple[int, ...] = ()
    replace: tuple[tuple[int, int], ...] = ()


def promote(candidates: Sequence[tuple[int, float]], deployed: Sequence[tuple[int, float]],
            max_deployments: int, min_improvement: float,
            fixed: Collection[int] = ()) -> Promotion:
    """Fill free slots with the best waiting trials; then let a waiting trial replace the worst
    deployed one when it beats it (strictly) by at least `min_improvement`. Higher rank is better.
    Deployed trials in `fixed` (pinned by hand, or mid-handover) hold their slot for good."""
    waiting = sorted(candidates, key=lambda c: (-c[1], c[0]))
    free = max(0, max_deployments - len(deployed))
    start = tuple(trial for trial, _ in waiting[:free])
    replace: list[tuple[int, int]] = []
    current = sorted((d for d in deployed if d[0] not in fixed),
                     key=lambda d: (d[1], d[0]))  # worst first
    for trial, rank in waiting[free:]:
        # Strictly better, by at least min_improvement: an equal rank (or -inf against -inf,
        # a metric missing on both) never churns a running trader.
        if not current or not (rank > current[0][1] and rank >= current[0][1] + min_improvement):
            break
        worst = current.pop(0)
        replace.append((worst[0], trial))
    return Promotion(start, tuple(replace))


def rank_of(rank_by: str, value: float | None, results: Mapping[str, Mapping[str, Any]]
            ) -> float:
    """The ranking number: `value` (the Optuna value) or `stage.metric`; -inf when missing."""
    if rank_by in ("value", "optuna.value"):
        found: Any = value
    else:
        stage, _, metric = rank_by.partition(".")
        found = results.get(stage, {}).get(metric)
    if isinstance(found, bool) or not isinstance(found, int | float) or found != found:
        return float("-inf")
    return float(found)


def restart_delay(consecutive: int, backoff: Sequence[float], jitter: float) -> float:
    """Exponential backoff from backoff[0] doubling to backoff[1], times a jitter in [0.5, 1]."""
    low, high = float(backoff[0]), float(backoff[1])
    base = min(high, low * 2 ** max(0, consecutive - 1))
    return base * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


@dataclass(frozen=True)
class CrashDecision:
    """What to do after a crash: restart after `delay`, or give up (`fatal`)."""

    fatal: bool
    delay: float
    crash_times: tuple[float, ...]
    consecutive: int


def after_crash(crash_times: Sequence[float], ran_for: float, now: float, max_crashes: int,
                window_seconds: float, backoff: Sequence[float], jitter: float) -> CrashDecision:
    """Record a crash; too many inside the window is a crash loop (fatal, never spins).

    A run that stayed up longer than the window was stable: the backoff starts over.
    """
    recent = tuple(t for t in crash_times if now - t <= window_seconds) + (now,)
    consecutive = 1 if ran_for > window_seconds else len(recent)
    if len(recent) >= max_crashes:
        return CrashDecision(True, 0.0, recent, consecutive)
    return CrashDecision(False, restart_delay(consecutive, backoff, jitter), recent, consecutive)


def evidence_shortfall(metrics: Mapping[str, Any], min_bars: int, min_trades: int
                       ) -> list[str]:
    """What paper trading still lacks before a verdict means anything: [] when enough."""
    short = []
    for key, least in (("bars", min_bars), ("trades", min_trades)):
        have = metrics.get(key)
        if isinstance(have, bool) or not isinstance(have, int | float) or have < least:
            shown = have if isinstance(have, int | float) and not isinstance(have, bool) else 0
            short.append(f"{key} {shown:g} of {least}")
    return short


def is_hung(heartbeat_age: float | None, running_for: float, timeout: float) -> bool:
    """No heartbeat for `timeout` seconds (counting from the start when there was none yet)."""
    age = running_for if heartbeat_age is None else min(heartbeat_age, running_for)
    return age > timeout
