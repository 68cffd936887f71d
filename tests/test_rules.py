"""The recommendation rule table on constructed cases, and the DSR block on the paper's values."""

from __future__ import annotations

import math

import pytest

from pipeline_v2.backtest.dsr import dsr_summary
from pipeline_v2.reports.rules import Facts, evaluate, warnings_of

CLEAN = Facts(status="passed", trades=120, dsr=0.99, degradation={"backtest -> paper": 0.1},
              consistency=0.8, catastrophic=0, paper_restarts=0, pbo=0.2,
              worst_fold_sharpe=0.4)


def fired(facts: Facts) -> list[str]:
    return [r["rule"] for r in evaluate(facts)["rules"] if r["fired"]]


def test_a_clean_trial_is_deployed_with_every_rule_listed() -> None:
    result = evaluate(CLEAN)
    assert result["verdict"] == "deploy"
    assert fired(CLEAN) == []
    assert len(result["rules"]) == 14
    assert warnings_of(CLEAN) == []


def test_unmeasured_numbers_never_fire() -> None:
    assert evaluate(Facts())["verdict"] == "deploy"


@pytest.mark.parametrize("change, verdict, rules", [
    ({"dsr": 0.94}, "watch", ["dsr_below_0.95"]),
    ({"dsr": 0.95}, "deploy", []),
    ({"dsr": 0.3}, "reject", ["dsr_below_0.5", "dsr_below_0.95"]),
    ({"trades": 29}, "watch", ["few_trades"]),
    ({"trades": 30}, "deploy", []),
    ({"degradation": {"backtest -> paper": 0.21, "a -> b": -0.5}}, "watch",
     ["degradation_over_20pct"]),
    ({"degradation": {"backtest -> paper": 0.2}}, "deploy", []),
    ({"catastrophic": 1}, "reject", ["catastrophic_stress"]),
    ({"model_missing": True}, "reject", ["model_missing"]),
    ({"status": "rejected"}, "reject", ["pipeline_verdict"]),
    ({"status": "retired"}, "reject", ["pipeline_verdict"]),
    ({"status": "pending", "has_backtest": False}, "watch", ["in_progress", "no_backtest"]),
    ({"pbo": 0.51}, "watch", ["study_pbo_above_0.5"]),
    ({"pbo": 0.5}, "deploy", []),
    ({"consistency": 0.49}, "watch", ["inconsistent"]),
    ({"worst_fold_sharpe": -0.01}, "watch", ["negative_fold"]),
    ({"paper_restarts": 2}, "watch", ["paper_restarts"]),
    ({"stale_seconds": 300.0}, "watch", ["stale_data"]),
    ({"trades": 3, "catastrophic": 2}, "reject", ["catastrophic_stress", "few_trades"]),
])
def test_each_rule_on_its_own(change: dict, verdict: str, rules: list[str]) -> None:
    facts = Facts(**{**CLEAN.__dict__, **change})
    assert evaluate(facts)["verdict"] == verdict
    assert fired(facts) == rules


def test_warnings_carry_the_detail_but_not_the_pipeline_verdict() -> None:
    facts = Facts(**{**CLEAN.__dict__, "status": "rejected", "trades": 12})
    assert warnings_of(facts) == [{
        "code": "few_trades",
        "message": "fewer than 30 backtest trades: too few to judge (12 trades)"}]


def test_dsr_block_reproduces_the_papers_worked_example() -> None:
    # Bailey & Lopez de Prado (2014): annualised SR 2.5 over 1,250 daily observations, 100
    # trials whose annualised Sharpe ratios have variance 1/2, skew -3, kurtosis 10.
    block = dsr_summary(2.5 / math.sqrt(250), 1250, -3.0, 10.0, 100, 0.5, 250)
    assert block["sr0_per_period"] == pytest.approx(0.1132, abs=5e-5)
    assert block["sr0"] == pytest.approx(0.1132 * math.sqrt(250), abs=1e-3)
    assert block["deflated_sharpe"] == pytest.approx(0.9004, abs=5e-4)
    assert (block["n_trials"], block["observations"], block["sharpe_variance"]) == (100, 1250,
                                                                                    0.5)
