"""The study-level metrics behind the `study.` gate namespace: PBO of the whole search.

Every trial a builtin backtest measured (passed or rejected: the search is judged on all it
tried) leaves its per-bar out-of-sample returns; aligned on the timestamps they share, they
form the T x N matrix CSCV needs. Computed on demand and cached per study until one of its
stages finishes (and at most every 30 s in a daemon).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from pipeline_v2.backtest.pbo import DEFAULT_BLOCKS, logit_histogram, pbo
from pipeline_v2.backtest.series import aligned_matrix, load_returns
from pipeline_v2.gates import STUDY, Gate, evaluate_gates
from pipeline_v2.store import Store


def study_metrics(store: Store, study: str, blocks: int = DEFAULT_BLOCKS) -> dict[str, Any]:
    """`pbo` and its details for one study; `pbo` is None (with `reason`) until computable."""
    rows = store.study_series(study)
    if not rows:
        return {"pbo": None, "trials": 0, "reason": "no trial has a saved return series yet"}
    # One stage's series: the one most trials have (a replay stage would measure other bars).
    stage = Counter(r["stage_name"] for r in rows).most_common(1)[0][0]
    series, numbers = [], []
    for row in rows:
        if row["stage_name"] != stage:
            continue
        try:
            series.append(load_returns(row["path"]))
        except (OSError, ValueError, KeyError):
            continue  # a run_dir cleaned up by hand: judge the search on what is left
        numbers.append(row["trial_number"])
    base: dict[str, Any] = {"stage": stage, "trials": len(series), "blocks": blocks}
    if len(series) < 2:
        return base | {"pbo": None, "reason": f"{len(series)} trial series; PBO needs 2 or more"}
    times, matrix = aligned_matrix(series)
    try:
        result = pbo(matrix, blocks)
    except ValueError as exc:
        return base | {"pbo": None, "observations": len(times), "reason": str(exc)}
    return base | {
        "pbo": result["pbo"], "observations": result["observations"],
        "n_combinations": result["n_combinations"], "slope": result["slope"],
        "intercept": result["intercept"], "prob_oos_loss": result["prob_oos_loss"],
        "logit_histogram": logit_histogram(result["logits"]),
    }


class StudyCache:
    """Study metrics per study, recomputed only when one of its stages finished since, and at
    most every `min_interval` seconds (a search of 1,000 trials takes ~1-3 s to evaluate)."""

    def __init__(self, min_interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval = min_interval
        self.clock = clock
        self._cache: dict[str, tuple[tuple[Any, ...], float, dict[str, Any]]] = {}

    def get(self, store: Store, study: str, fresh: bool = False) -> dict[str, Any]:
        """The study's metrics, from the cache while its stages have not moved (or, unless
        `fresh`, while the last computation is younger than `min_interval`)."""
        key, now = store.study_fingerprint(study), self.clock()
        cached = self._cache.get(study)
        if cached and (cached[0] == key or (not fresh and now - cached[1] < self.min_interval)):
            return cached[2]
        found = study_metrics(store, study)
        self._cache[study] = (key, now, found)
        return found


def study_gates(gates: list[Gate]) -> list[Gate]:
    """The gates that read the `study.` namespace."""
    return [g for g in gates if g.metric.startswith(STUDY + ".")]


def trial_gates(gates: list[Gate]) -> list[Gate]:
    """The gates on the trial's own metrics (everything outside `study.`)."""
    return [g for g in gates if not g.metric.startswith(STUDY + ".")]


def study_gate_reasons(gates: list[Gate], metrics: Mapping[str, Any]) -> list[str]:
    """Why the study fails its `study.` gates (empty: it passes, or there are none)."""
    return evaluate_gates(study_gates(gates), {}, {STUDY: metrics})
