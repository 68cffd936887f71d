"""Which trials hold the deploy stage's slots: promotion, deploys by hand and handovers.

A replacement never takes a slot from a working trader before it has proven it starts: the new
trader starts beside the old one (capacity is exceeded by one during the handover, and there is
one handover at a time) and the old one is retired at the new one's first heartbeat. If the new
one never gets there, the old one keeps trading.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline_v2 import plan
from pipeline_v2.config import DeployStageConfig
from pipeline_v2.lifecycle import OCCUPYING, RUNNING
from pipeline_v2.logs import get_logger
from pipeline_v2.models import Deployment, DeploymentStatus, TrialStatus
from pipeline_v2.paths import trial_dir
from pipeline_v2.reports.study import StudyCache, study_gate_reasons, study_gates
from pipeline_v2.store import Store

D = DeploymentStatus
# Promotion runs when its inputs moved (store.promotion_inputs); besides, a pass every
# PROMOTE_EVERY_S while `study.` gates hold trials back (their metrics are recomputed at most
# that often), else every PROMOTE_SAFETY_S, for a change that came without an event.
PROMOTE_EVERY_S = 30.0
PROMOTE_SAFETY_S = 300.0
PROMOTE_SPACING_S = 1.0
BY_HAND = "deployed by hand"
log = get_logger("deployer")


class PromotionMixin:
    """The deployer's slot decisions: rank, promote into free slots, hand over, deploy by
    hand."""

    store: Store
    stage: DeployStageConfig | None
    stage_name: str | None
    logs_dir: Path
    _promoted_for: tuple[int, ...]
    _promote_again: float
    _promote_not_before: float
    _promote_deferred: bool
    studies: StudyCache
    mono: float

    # The lifecycle side (lifecycle.Lifecycle) provides these; it comes first in the MRO.
    guarded: Callable[..., None]
    retire: Callable[[int, float, str], None]
    start: Callable[[Deployment, float], None]

    def deploy(self, trial_id: int, now: float, reason: str,
               replaces: int | None = None) -> Deployment:
        """Record a deployment due to start (the start itself waits for a free slot, unless
        it `replaces` a trader, which it retires at its own first heartbeat)."""
        trial = self.store.get_trial(trial_id)
        run_dir = trial_dir(self.logs_dir, trial, "deployments")
        dep = self.store.begin_deployment(trial_id, self.stage_name, str(run_dir), now, reason,
                                          replaces=replaces)
        log.info("deployment_created", trial=trial.ref, reason=reason)
        return dep

    # -- ranking --------------------------------------------------------------------------------

    def _rank(self, trial_id: int) -> float:
        trial = self.store.get_trial(trial_id)
        results = self.store.stage_results(trial_id)
        return plan.rank_of(self.stage.rank_by, trial.value, results)  # type: ignore[union-attr]

    def _study_allows(self, study: str, fresh: bool = False) -> bool:
        """`study.` gates on the deploy stage hold promotion (not reject) while they fail."""
        gates = study_gates(self.stage.parsed_gates)  # type: ignore[union-attr]
        return not gates or not study_gate_reasons(
            gates, self.studies.get(self.store, study, fresh))

    def _deployed(self) -> tuple[list[tuple[int, float]], set[int]]:
        """Deployed trials holding a slot with their rank, and those that must stay (pinned
        by hand, or in the middle of a handover)."""
        targets = self.store.handover_targets()
        live = self.store.deployments_with_trials(*RUNNING, D.BACKOFF.value)
        ids, fixed = [], set()
        for dep, status in live:
            if status != TrialStatus.DEPLOYED or dep.trial_id in targets:
                continue  # a trader being replaced gives its slot to its successor
            ids.append(dep.trial_id)
            if dep.replaces is not None:
                fixed.add(dep.trial_id)
        fixed |= self.store.pinned_of(ids)  # one query each, never one per trader
        ranks = self.store.ranks_of(ids, self.stage.rank_by)  # type: ignore[union-attr]
        return [(t, ranks[t]) for t in ids], fixed

    def _promotion(self, fresh: bool = False) -> plan.Promotion:
        stage: DeployStageConfig = self.stage  # type: ignore[assignment]
        deployed, fixed = self._deployed()
        # Only the best few waiting trials can fill a slot or replace a deployed one (one each):
        # one read in rank order through an index, whatever the number of trials.
        limit = max(stage.max_deployments, len(deployed))
        waiting = self.store.promotion_candidates(self.stage_name, stage.rank_by, limit)
        if study_gates(stage.parsed_gates):  # `study.` gates hold a study's trials back
            studies = {t: self.store.get_trial(t).study for t, _ in waiting}
            allowed = {s: self._study_allows(s, fresh) for s in set(studies.values())}
            waiting = [(t, rank) for t, rank in waiting if allowed[studies[t]]]
        return plan.promote(waiting, deployed, stage.max_deployments, stage.min_improvement,
                            fixed)

    def _promote(self, now: float) -> None:
        # Only when its inputs moved, and at most once a second while stages churn out events.
        mono = self.mono  # the turn's monotonic reading: pacing never follows the wall clock
        if mono < self._promote_not_before:
            self._promote_deferred = True  # next_check_due wakes the loop when the spacing ends
            return
        self._promote_deferred = False
        key = self.store.promotion_inputs()
        if key == self._promoted_for and mono < self._promote_again:
            return
        gated = bool(study_gates(self.stage.parsed_gates))  # type: ignore[union-attr]
        self._promoted_for = key
        self._promote_again = mono + (PROMOTE_EVERY_S if gated else PROMOTE_SAFETY_S)
        self._promote_not_before = mono + PROMOTE_SPACING_S
        promotion = self._promotion()
        for trial_id in promotion.start:
            self.guarded(trial_id, "deploy", now, self.deploy, trial_id, now,
                         "promoted: a slot was free")
        busy = self._handover_busy()
        for old, new in promotion.replace[:0 if busy else 1]:
            self.guarded(new, "replace", now, self.deploy, new, now,
                         f"promoted: replaces trial {self.store.get_trial(old).number}", old)

    # -- starting within capacity ---------------------------------------------------------------

    def _handover_busy(self) -> bool:
        """One handover at a time, and none while a replaced trader is still stopping: so at
        most max_deployments + 1 traders are ever live."""
        live = len(self.store.deployments(*OCCUPYING))  # successors and stopping ones included
        return bool(self.store.handover_targets()) or live > self.stage.max_deployments  # type: ignore[union-attr]

    def _slots_taken(self) -> int:
        # A successor mid-handover sits in its predecessor's slot.
        return sum(1 for d in self.store.deployments(*OCCUPYING) if d.replaces is None)

    def blocked_deployments(self, now: float) -> list[Deployment]:
        """Deployments due to start that wait for a slot (an exit or a stop frees one)."""
        if self._slots_taken() < self.stage.max_deployments:  # type: ignore[union-attr]
            return []
        return [d for d in self.store.deployments(D.BACKOFF.value)
                if d.next_start_at is not None and d.next_start_at <= now
                and d.replaces is None]

    def _start_due(self, now: float) -> None:
        occupied = self._slots_taken()
        capacity = self.stage.max_deployments  # type: ignore[union-attr]
        for dep in self.store.deployments(D.BACKOFF.value):
            if dep.next_start_at is not None and dep.next_start_at > now:
                continue
            trial = self.store.get_trial(dep.trial_id)
            if trial.status not in (TrialStatus.DEPLOYED, TrialStatus.VALIDATED):
                continue
            if dep.replaces is not None:  # takes over its predecessor's slot
                self.guarded(dep.trial_id, "start", now, self.start, dep, now)
                continue
            if occupied >= capacity:
                if (dep.reason == BY_HAND and dep.started_at is None
                        and not self._handover_busy()):
                    self.guarded(dep.trial_id, "make room", now, self._make_room_for, dep, now)
                continue  # else wait for a slot: an exit or a stop wakes the loop
            self.guarded(dep.trial_id, "start", now, self.start, dep, now)
            occupied += 1

    def _make_room_for(self, dep: Deployment, now: float) -> None:
        """A deployment by hand with no free slot starts beside the one it will replace."""
        victim = self._victim()
        if victim is not None:
            self.store.set_replaces(dep.id, victim, now)
            self.start(self.store.get_deployment(dep.id), now)

    def _victim(self) -> int | None:
        """The trial a deploy by hand replaces: the lowest-ranked running one, unpinned first."""
        targets = self.store.handover_targets()
        running = [(d.trial_id, self.store.get_trial(d.trial_id))
                   for d in self.store.deployments(*RUNNING)
                   if d.replaces is None and d.trial_id not in targets]
        ranked = [(trial.pinned, self._rank(tid), tid) for tid, trial in running
                  if trial.status == TrialStatus.DEPLOYED]
        return min(ranked)[2] if ranked else None

    def hand_over(self, dep: Deployment, now: float) -> None:
        """A successor's first heartbeat: retire the trader it replaces."""
        if dep.replaces is None:
            return
        old = self.store.get_trial(dep.replaces)
        self.store.set_replaces(dep.id, None, now)
        if old.status != TrialStatus.DEPLOYED:
            return  # stopped or retired meanwhile
        number = self.store.get_trial(dep.trial_id).number
        suffix = " (deployed by hand)" if dep.reason == BY_HAND else ""
        log.info("deployment_handed_over", old=old.ref, new=number)
        self.retire(old.id, now, f"replaced by trial {number}{suffix}")
