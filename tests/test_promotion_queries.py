"""Promotion reads the best candidates through an index: the same choice as ranking every
passed trial, in a fixed number of queries whatever the number of trials."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline_v2 import plan
from pipeline_v2.models import StageStatus, TrialStatus
from pipeline_v2.store import Store

STAGES = [("backtest", StageStatus.PENDING), ("deploy", StageStatus.PENDING)]
SHARPES = [0.5, None, 2.0, "high", 1.5, 2.0, math.nan, -1.0, True, 3.0, 2.0, 0.1]


def passed_trials(path: Path) -> Store:
    """Passed trials waiting for deploy, ranked by odd metrics (missing, text, NaN, ties)."""
    store = Store(path)
    with store.transaction():
        for i, sharpe in enumerate(SHARPES):
            trial_id = store.add_trial({"study": "s", "number": i, "value": float(i % 5)},
                                       STAGES, 1, 1.0)
            results = {} if sharpe is None else {"sharpe": sharpe}
            store.conn.execute("UPDATE stages SET status = 'passed', results = ? WHERE"
                               " trial_id = ? AND stage_name = 'backtest'",
                               [json.dumps(results, allow_nan=True), trial_id])
            status = TrialStatus.REJECTED if i == 9 else TrialStatus.PASSED  # 3.0: rejected
            store.conn.execute("UPDATE trials SET status = ? WHERE id = ?",
                               [status.value, trial_id])
    return store


def brute_force(store: Store, rank_by: str) -> list[tuple[int, float]]:
    return sorted(((t.id, plan.rank_of(rank_by, t.value, store.stage_results(t.id)))
                   for t in store.list_trials(TrialStatus.PASSED.value)),
                  key=lambda c: (-c[1], c[0]))


@pytest.mark.parametrize("rank_by", ["backtest.sharpe", "value"])
@pytest.mark.parametrize("limit", [1, 2, 3, 5])
def test_candidates_choose_as_ranking_everything_does(tmp_path: Path, rank_by: str,
                                                      limit: int) -> None:
    store = passed_trials(tmp_path / "p.db")
    store.ensure_rank_index(rank_by)
    every = brute_force(store, rank_by)
    for deployed in ([], every[-2:]):
        # As the deployer asks: enough for every slot and every deployed one to be replaced.
        found = store.promotion_candidates("deploy", rank_by, max(limit, len(deployed)))
        waiting = [c for c in every if c not in deployed]
        assert plan.promote(found, deployed, limit, 0.05) == plan.promote(
            waiting, deployed, limit, 0.05)
    assert store.ranks_of([c[0] for c in every], rank_by) == dict(every)


def test_candidates_are_read_in_rank_order_through_the_index(tmp_path: Path) -> None:
    store = passed_trials(tmp_path / "p.db")
    store.ensure_rank_index("backtest.sharpe")
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    store.promotion_candidates("deploy", "backtest.sharpe", 3)
    store.conn.set_trace_callback(None)
    assert len(seen) <= 2  # the read, and the ties with the last one: never one per trial
    for sql in seen:
        plan_rows = [r[3] for r in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert not any(d.startswith("SCAN") or "TEMP B-TREE" in d for d in plan_rows), plan_rows
