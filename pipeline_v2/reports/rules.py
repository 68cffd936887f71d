"""Warnings and the deploy / watch / reject recommendation for one trial: pure, one rule table.

Each rule reads `Facts` (numbers the trial report gathered) and either fires or not; the
verdict is the most severe one among the rules that fired (reject > watch > deploy), and the
report prints every rule with whether it fired, so the verdict is never a black box.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline_v2.models import TrialStatus

T = TrialStatus
ENDED = {T.REJECTED.value, T.FAILED.value, T.RETIRED.value, T.CANCELLED.value}
UNDECIDED = {T.PENDING.value, T.PROCESSING.value, T.PAUSED.value}

MIN_TRADES = 30
MAX_DEGRADATION = 0.20
MIN_DSR = 0.95
REJECT_DSR = 0.50
MAX_PBO = 0.50
MIN_CONSISTENCY = 0.50
VERDICTS = ("deploy", "watch", "reject")  # increasing severity


@dataclass(frozen=True)
class Facts:
    """What the rules look at; None means "not measured" and never fires a rule."""

    status: str = TrialStatus.PASSED.value
    has_backtest: bool = True
    trades: int | None = None
    dsr: float | None = None
    degradation: dict[str, float] = field(default_factory=dict)  # "a -> b": fraction lost
    consistency: float | None = None
    catastrophic: int | None = None
    paper_restarts: int = 0
    stale_seconds: float | None = None  # age of a live trader's metrics beyond its limit
    model_missing: bool = False
    pbo: float | None = None
    worst_fold_sharpe: float | None = None


@dataclass(frozen=True)
class Rule:
    """One line of the table: a name, what it means, its verdict, and when it fires."""

    name: str
    verdict: str
    meaning: str
    fires: Callable[[Facts], bool]
    detail: Callable[[Facts], str]


def _worst_degradation(f: Facts) -> tuple[str, float] | None:
    if not f.degradation:
        return None
    return max(f.degradation.items(), key=lambda kv: kv[1])


def _lt(value: float | None, limit: float) -> bool:
    return value is not None and value < limit


RULES: tuple[Rule, ...] = (
    Rule("pipeline_verdict", "reject", "the pipeline rejected, failed, retired or cancelled it",
         lambda f: f.status in ENDED,
         lambda f: f"status {f.status}"),
    Rule("in_progress", "watch", "the pipeline has not decided on it yet",
         lambda f: f.status in UNDECIDED,
         lambda f: f"status {f.status}"),
    Rule("no_backtest", "watch", "no out-of-sample backtest measured it",
         lambda f: not f.has_backtest, lambda f: "no stage reported a Sharpe ratio"),
    Rule("model_missing", "reject", "its model artifact is missing: nothing to deploy",
         lambda f: f.model_missing, lambda f: "model_dir does not exist"),
    Rule("catastrophic_stress", "reject", "a stress path lost over 90 %",
         lambda f: (f.catastrophic or 0) > 0, lambda f: f"{f.catastrophic} catastrophic paths"),
    Rule("dsr_below_0.5", "reject", f"DSR < {REJECT_DSR}: the Sharpe ratio is more likely luck "
         "than skill given the search size", lambda f: _lt(f.dsr, REJECT_DSR),
         lambda f: f"DSR {f.dsr:.3f}"),
    Rule("dsr_below_0.95", "watch", f"DSR < {MIN_DSR}: not significant at 95 %",
         lambda f: _lt(f.dsr, MIN_DSR), lambda f: f"DSR {f.dsr:.3f}"),
    Rule("study_pbo_above_0.5", "watch", f"the study's PBO > {MAX_PBO}: the search mostly "
         "selects noise", lambda f: f.pbo is not None and f.pbo > MAX_PBO,
         lambda f: f"PBO {f.pbo:.2f}"),
    Rule("few_trades", "watch", f"fewer than {MIN_TRADES} backtest trades: too few to judge",
         lambda f: _lt(f.trades, MIN_TRADES), lambda f: f"{f.trades} trades"),
    Rule("degradation_over_20pct", "watch", f"Sharpe fell by more than {MAX_DEGRADATION:.0%} "
         "from one stage to the next", lambda f: (_worst_degradation(f) or ("", 0.0))[1]
         > MAX_DEGRADATION,
         lambda f: "{} lost {:.0%}".format(*(_worst_degradation(f) or ("", 0.0)))),
    Rule("negative_fold", "watch", "a walk-forward fold lost money (Sharpe < 0)",
         lambda f: _lt(f.worst_fold_sharpe, 0.0),
         lambda f: f"worst fold Sharpe {f.worst_fold_sharpe:.2f}"),
    Rule("inconsistent", "watch", f"consistency < {MIN_CONSISTENCY}: out-of-sample measurements "
         "disagree with the backtest", lambda f: _lt(f.consistency, MIN_CONSISTENCY),
         lambda f: f"consistency {f.consistency:.2f}"),
    Rule("paper_restarts", "watch", "the paper trader restarted (crashes or hangs)",
         lambda f: f.paper_restarts > 0, lambda f: f"{f.paper_restarts} restarts"),
    Rule("stale_data", "watch", "a live trader's metrics stopped updating",
         lambda f: f.stale_seconds is not None, lambda f: f"{f.stale_seconds:.0f}s old"),
)


def evaluate(facts: Facts, rules: tuple[Rule, ...] = RULES) -> dict[str, Any]:
    """The verdict and every rule's outcome, in table order."""
    rows, verdict = [], "deploy"
    for rule in rules:
        fired = bool(rule.fires(facts))
        rows.append({"rule": rule.name, "verdict": rule.verdict, "meaning": rule.meaning,
                     "fired": fired, "detail": rule.detail(facts) if fired else None})
        if fired and VERDICTS.index(rule.verdict) > VERDICTS.index(verdict):
            verdict = rule.verdict
    return {"verdict": verdict, "rules": rows}


def warnings_of(facts: Facts) -> list[dict[str, str]]:
    """The rules that fired (but the pipeline's own verdict), as code and a one-line message."""
    return [{"code": r["rule"], "message": f"{r['meaning']} ({r['detail']})"}
            for r in evaluate(facts)["rules"] if r["fired"] and r["rule"] != "pipeline_verdict"]
