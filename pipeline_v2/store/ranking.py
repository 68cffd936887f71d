"""Promotion's reads: the best waiting trials and the deployed ones' ranks, by index.

A rank is the Optuna value or a metric of a passed stage (`rank_by`, e.g. "backtest.sharpe").
For a stage metric an expression index on (stage_name, status, the metric) is made once, so the
best candidates are read in rank order and the read stops after `limit`: the cost does not grow
with the number of trials.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline_v2.models import StageStatus, TrialStatus
from pipeline_v2.store.base import BaseStore

# A metric name that can be written into an index expression as it is.
PLAIN_METRIC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PASSED = f"'{StageStatus.PASSED.value}'"
# Results are written with NaN / Infinity tokens (json allow_nan), which SQLite's JSON parser
# refuses: read them as null (ranks last, as plan.rank_of) and as +-1e999 (+-inf).
CLEAN = ("replace(replace(replace(r.results, '-Infinity', '-1e999'), 'Infinity', '1e999'),"
         " 'NaN', 'null')")


def rank_source(rank_by: str) -> tuple[str | None, str | None]:
    """(stage, metric) for a stage metric; (None, None) for the Optuna value."""
    if rank_by in ("value", "optuna.value"):
        return None, None
    stage, _, metric = rank_by.partition(".")
    return stage, metric


def _rank(value: Any, kind: str | None) -> float:
    # As plan.rank_of: a missing, non-numeric (true/false included) or NaN metric ranks last.
    if value is None or kind not in (None, "integer", "real") or value != value:
        return float("-inf")
    return float(value)


class RankingMixin(BaseStore):
    """Candidates for a deploy slot, and the ranks of what is deployed."""

    def _metric_sql(self, metric: str) -> tuple[str, str, list[Any]]:
        """SQL for the metric of stage row `r` and its JSON type, and their parameters."""
        if PLAIN_METRIC.match(metric):
            path = f"'$.\"{metric}\"'"  # a literal, so the expression index matches
            params: list[Any] = []
        else:
            path, params = "?", ['$."' + metric.replace('"', '\\"') + '"'] * 2
        return (f"CASE WHEN json_valid({CLEAN}) THEN json_extract({CLEAN}, {path}) END",
                f"CASE WHEN json_valid({CLEAN}) THEN json_type({CLEAN}, {path}) END", params)

    def ensure_rank_index(self, rank_by: str) -> None:
        """The expression index promotion reads candidates by (made once; a no-op after)."""
        stage, metric = rank_source(rank_by)
        if stage is None or metric is None or not PLAIN_METRIC.match(metric):
            return
        name = f"stages_rank_{re.sub(r'[^A-Za-z0-9_]', '_', stage)}_{metric}"
        expression, _, _ = self._metric_sql(metric)
        self.conn.execute(
            f'CREATE INDEX IF NOT EXISTS "{name}" ON stages'
            f" (stage_name, status, {expression.replace('r.results', 'results')})")

    def promotion_candidates(self, deploy_stage: str, rank_by: str,
                             limit: int) -> list[tuple[int, float]]:
        """The best `limit` passed trials waiting for a deploy slot (and any tied with the
        last), as (trial id, rank); unranked ones (rank -inf) only to fill up to `limit`."""
        stage, metric = rank_source(rank_by)
        waiting = (" CROSS JOIN stages d ON d.trial_id = t.id AND d.stage_name = ?"
                   f" AND d.status = '{StageStatus.PENDING.value}'"
                   f" WHERE t.status = '{TrialStatus.PASSED.value}'")
        if stage is None or metric is None:
            value, kind, params, rank_join, extra = "t.value", "'real'", [], "", []
            numeric, unranked = "t.value IS NOT NULL", "t.value IS NULL"
            ranked_from = f"trials t{waiting}"
        else:
            value, kind, params = self._metric_sql(metric)
            numeric = f"{kind} IN ('integer', 'real')"
            unranked = f"({kind} IS NULL OR {kind} NOT IN ('integer', 'real'))"
            # CROSS JOIN: SQLite keeps `r` outermost, walking the rank index in order.
            ranked_from = (f"stages r CROSS JOIN trials t ON t.id = r.trial_id{waiting}"
                           f" AND r.stage_name = ? AND r.status = {PASSED}")
            rank_join = (" LEFT JOIN stages r ON r.trial_id = t.id AND r.stage_name = ?"
                         f" AND r.status = {PASSED}")
            extra = [stage]
        rows = self._all(f"SELECT t.id, {value} FROM {ranked_from} AND {numeric}"
                         f" ORDER BY {value} DESC LIMIT ?",
                         [*params[:1], deploy_stage, *extra, *params, limit])
        found = [(r[0], float(r[1])) for r in rows]
        if found and len(found) == limit:
            # Ties with the last one: plan.promote breaks them by trial id, so it sees them all.
            seen = {t for t, _ in found}
            tied = self._all(f"SELECT t.id FROM {ranked_from} AND {numeric} AND {value} = ?",
                             [deploy_stage, *extra, *params, rows[-1][1]])
            found += [(r[0], found[-1][1]) for r in tied if r[0] not in seen]
        elif len(found) < limit:
            joined = waiting.replace(" WHERE", rank_join + " WHERE")
            rows = self._all(f"SELECT t.id FROM trials t{joined} AND {unranked}"
                             " ORDER BY t.id LIMIT ?",
                             [deploy_stage, *extra, *params, limit - len(found)])
            found += [(r[0], float("-inf")) for r in rows]
        return found

    def pinned_of(self, trial_ids: list[int]) -> set[int]:
        """Which of these trials are pinned (deployed by hand): one query."""
        if not trial_ids:
            return set()
        marks = ", ".join("?" * len(trial_ids))
        rows = self._all(f"SELECT id FROM trials WHERE id IN ({marks}) AND pinned", trial_ids)
        return {r[0] for r in rows}

    def ranks_of(self, trial_ids: list[int], rank_by: str) -> dict[int, float]:
        """The ranks of these trials (e.g. the deployed ones): one query."""
        if not trial_ids:
            return {}
        marks = ", ".join("?" * len(trial_ids))
        stage, metric = rank_source(rank_by)
        if stage is None or metric is None:
            rows = self._all(f"SELECT id, value, NULL FROM trials WHERE id IN ({marks})",
                             trial_ids)
        else:
            value, kind, params = self._metric_sql(metric)
            rows = self._all(
                f"SELECT t.id, {value}, {kind} FROM trials t LEFT JOIN stages r"
                f" ON r.trial_id = t.id AND r.stage_name = ? AND r.status = {PASSED}"
                f" WHERE t.id IN ({marks})", [*params, stage, *trial_ids])
        ranks = {r[0]: _rank(r[1], r[2]) for r in rows}
        return {t: ranks.get(t, float("-inf")) for t in trial_ids}
