"""plan.py with plain data: no clock, no DB, no processes."""

from __future__ import annotations

import itertools

import pytest

from pipeline_v2 import plan
from pipeline_v2.config import parse_config
from pipeline_v2.models import StageRun, StageStatus, TrialStatus
from pipeline_v2.plan import Outcome

S = StageStatus
CONFIG = parse_config({
    "retry": {"delays": [5, 30, 300]},
    "stages": {
        "backtest": {"run": "m:f", "max_attempts": 3, "gates": {"sharpe": ">= 1.0"}},
        "stress": {"run": "m:f", "enabled": False},
        "replay": {"run": "m:f", "max_attempts": 2, "retry": {"delays": [1]},
                   "gates": {"backtest.sharpe": ">= 1.2"}},
        "deploy": {},
    },
})
NOW = 1000.0


def stage(name: str, position: int, attempts: int = 1, interruptions: int = 0) -> StageRun:
    return StageRun(id=position + 1, trial_id=1, name=name, position=position,
                    status=S.RUNNING, attempts=attempts, interruptions=interruptions)


def statuses(**overrides: StageStatus) -> dict[str, StageStatus]:
    base = {"backtest": S.PENDING, "stress": S.SKIPPED, "replay": S.PENDING, "deploy": S.PENDING}
    return base | overrides


def test_initial_stages_skip_disabled_ones() -> None:
    rows, pos, status = plan.initial_stages(CONFIG)
    assert rows == [("backtest", S.PENDING), ("stress", S.SKIPPED), ("replay", S.PENDING),
                    ("deploy", S.PENDING)]
    assert (pos, status) == (0, TrialStatus.PENDING)


def test_a_trial_with_only_a_deploy_stage_is_passed_at_once() -> None:
    config = parse_config({"stages": {"off": {"run": "m:f", "enabled": False}, "deploy": {}}})
    rows, pos, status = plan.initial_stages(config)
    assert (pos, status) == (1, TrialStatus.PASSED)


@pytest.mark.parametrize("combo", list(itertools.product(list(S), repeat=3)))
def test_position_after_every_combination(combo) -> None:
    backtest, replay, deploy = combo
    got = plan.position_after(
        {"backtest": backtest, "stress": S.SKIPPED, "replay": replay, "deploy": deploy}, CONFIG
    )
    final = {S.PASSED, S.SKIPPED, S.CANCELLED}
    if backtest in (S.REJECTED, S.FAILED):
        expected = (0, TrialStatus.REJECTED if backtest == S.REJECTED else TrialStatus.FAILED)
    elif backtest not in final:
        expected = (0, TrialStatus.PROCESSING)
    elif replay in (S.REJECTED, S.FAILED):
        expected = (2, TrialStatus.REJECTED if replay == S.REJECTED else TrialStatus.FAILED)
    elif replay not in final:
        expected = (2, TrialStatus.PROCESSING)
    elif deploy in (S.REJECTED, S.FAILED):
        expected = (3, TrialStatus.REJECTED if deploy == S.REJECTED else TrialStatus.FAILED)
    elif deploy not in final:
        expected = (3, TrialStatus.PASSED)  # waiting for a deployment slot
    else:
        expected = (4, TrialStatus.PASSED)
    assert got[:2] == expected


def test_a_stage_disabled_after_discovery_is_skipped() -> None:
    config = parse_config({"stages": {"a": {"run": "m:f"}, "b": {"run": "m:f", "enabled": False},
                                      "c": {"run": "m:f"}}})
    pos, status, skip = plan.position_after({"a": S.PASSED, "b": S.PENDING, "c": S.PENDING},
                                            config)
    assert (pos, status, skip) == (2, TrialStatus.PROCESSING, ("b",))


def test_ok_with_passing_gates_advances_past_disabled_stages() -> None:
    update = plan.after_attempt(stage("backtest", 0), Outcome("ok", {"sharpe": 1.5}),
                                statuses(), {}, CONFIG, NOW)
    assert (update.status, update.stage_pos, update.trial_status) == (S.PASSED, 2,
                                                                     TrialStatus.PROCESSING)
    assert update.results == {"sharpe": 1.5}
    assert update.message == "gates passed"


def test_failing_gate_rejects_with_every_reason() -> None:
    update = plan.after_attempt(stage("backtest", 0), Outcome("ok", {"sharpe": 0.82}),
                                statuses(), {}, CONFIG, NOW)
    assert (update.status, update.trial_status) == (S.REJECTED, TrialStatus.REJECTED)
    assert update.reason == update.trial_reason == "sharpe 0.82 < 1.0"
    assert update.next_attempt_at is None


def test_gate_on_an_earlier_stage() -> None:
    update = plan.after_attempt(stage("replay", 2), Outcome("ok", {}), statuses(backtest=S.PASSED),
                                {"backtest": {"sharpe": 1.1}}, CONFIG, NOW)
    assert update.reason == "backtest.sharpe 1.1 < 1.2"


def test_last_stage_before_deploy_passes_the_trial() -> None:
    update = plan.after_attempt(stage("replay", 2), Outcome("ok", {}), statuses(backtest=S.PASSED),
                                {"backtest": {"sharpe": 1.3}}, CONFIG, NOW)
    assert (update.status, update.stage_pos, update.trial_status) == (S.PASSED, 3,
                                                                     TrialStatus.PASSED)


@pytest.mark.parametrize(("attempts", "delay"), [(1, 5), (2, 30)])
def test_error_schedules_a_retry_after_the_delay(attempts: int, delay: float) -> None:
    update = plan.after_attempt(stage("backtest", 0, attempts), Outcome("error", message="boom"),
                                statuses(), {}, CONFIG, NOW)
    assert (update.status, update.next_attempt_at, update.trial_status) == (
        S.PENDING, NOW + delay, TrialStatus.PROCESSING)
    assert update.error_message == "boom"


def test_error_on_the_last_attempt_fails_the_trial() -> None:
    update = plan.after_attempt(stage("backtest", 0, 3), Outcome("error", message="boom",
                                                                 traceback="tb"),
                                statuses(), {}, CONFIG, NOW)
    assert (update.status, update.trial_status) == (S.FAILED, TrialStatus.FAILED)
    assert update.trial_reason == "backtest: boom"
    assert update.error_traceback == "tb"


def test_per_stage_delays_override_and_the_last_repeats() -> None:
    update = plan.after_attempt(stage("replay", 2, 1), Outcome("error", message="x"),
                                statuses(backtest=S.PASSED), {}, CONFIG, NOW)
    assert update.next_attempt_at == NOW + 1
    assert plan.retry_delay([5, 30, 300], 9) == 300


def test_reject_outcome_is_final() -> None:
    update = plan.after_attempt(stage("backtest", 0), Outcome("reject", message="no trades"),
                                statuses(), {}, CONFIG, NOW)
    assert (update.status, update.reason, update.trial_status) == (
        S.REJECTED, "no trades", TrialStatus.REJECTED)


def test_interruptions_do_not_count_until_the_third() -> None:
    first = plan.after_attempt(stage("backtest", 0, attempts=2), Outcome("interrupted"),
                               statuses(), {}, CONFIG, NOW)
    assert (first.status, first.attempts, first.interruptions, first.next_attempt_at) == (
        S.PENDING, 1, 1, NOW)
    third = plan.after_attempt(stage("backtest", 0, attempts=3, interruptions=2),
                               Outcome("interrupted"), statuses(), {}, CONFIG, NOW)
    assert (third.status, third.error_message) == (S.FAILED, "interrupted 3 times in a row")


@pytest.mark.parametrize(("running", "paused", "stopping", "expected"), [
    (0, False, False, [1, 2]), (1, False, False, [1]), (2, False, False, []),
    (0, True, False, []), (0, False, True, []),
])
def test_attempts_to_start(running, paused, stopping, expected) -> None:
    assert plan.attempts_to_start([1, 2, 3], running, 2, paused=paused,
                                  stopping=stopping) == expected


def test_next_wake_is_capped_and_never_negative() -> None:
    assert plan.next_wake(NOW, None, cap=1.0) == 1.0
    assert plan.next_wake(NOW, NOW + 0.25, NOW + 5) == 0.25
    assert plan.next_wake(NOW, NOW - 3) == 0.0
