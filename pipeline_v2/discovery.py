"""Incremental discovery: every trial in a wanted state recorded once, at O(new) cost per poll.

Per study the state DB keeps a cursor: the highest trial id seen, the highest as of the poll
before (re-read once, so a trial whose insert committed late is still seen), and the ids seen
unfinished (RUNNING / WAITING), which are re-checked every poll until they finish.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline_v2 import plan
from pipeline_v2.config import Config
from pipeline_v2.errors import StorageError
from pipeline_v2.optuna_source import (
    FINAL_STATES,
    StudyRef,
    TrialRecord,
    TrialSource,
    open_source,
)
from pipeline_v2.store import Store


@dataclass
class DiscoveryResult:
    """What one pass found."""

    new: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """New trials over all studies."""
        return sum(self.new.values())


def render_model_dir(template: str, record: TrialRecord, study: str, config: Config) -> str:
    """Resolve the `optuna.model_dir` template for one trial (relative to the config folder)."""
    values = record.values or [None]
    text = template.format(
        study=study,
        number=record.number,
        trial_id=record.trial_id,
        value=values[0],
        params=record.params,
        user_attrs=record.user_attrs,
        python=sys.executable,
    )
    return str(config.path(text))


def trial_fields(record: TrialRecord, study: StudyRef, config: Config) -> dict[str, Any]:
    """The state DB row for a discovered trial, with flags for anything suspicious."""
    flags: list[str] = []
    values = record.values
    if values is not None and any(v is not None and not math.isfinite(v) for v in values):
        flags.append("non_finite_value")
    try:
        model_dir = render_model_dir(config.optuna.model_dir, record, study.name, config)
    except (KeyError, IndexError, AttributeError, ValueError) as exc:
        model_dir = ""
        flags.append(f"model_dir_unresolved: {exc!r}")
    return {
        "study": study.name,
        "study_id": study.study_id,
        "number": record.number,
        "trial_id": record.trial_id,
        "value": values[0] if values and len(values) == 1 else None,
        "values": values,
        "params": record.params,
        "user_attrs": record.user_attrs,
        "constraints": record.constraints,
        "datetime_complete": record.datetime_complete,
        "model_dir": model_dir,
        "flags": flags,
    }


class Discovery:
    """Polls one Optuna storage for the configured studies. Keep one per daemon."""

    def __init__(self, config: Config, store: Store, source: TrialSource | None = None) -> None:
        self.config = config
        self.store = store
        self.storage = config.storage_url
        self._source = source

    @property
    def source(self) -> TrialSource:
        """The storage adapter, opened on first use (and again after an error)."""
        if self._source is None:
            self._source = open_source(self.storage)
        return self._source

    def close(self) -> None:
        """Release the storage connection."""
        if self._source is not None:
            self._source.close()
            self._source = None

    def poll(self, now: float | None = None) -> DiscoveryResult:
        """One pass over every configured study. Storage errors are reported, not raised."""
        started = time.perf_counter()
        result = DiscoveryResult()
        try:
            with self.source.session():
                studies = self.source.studies(self.config.optuna.studies)
                found = {s.name for s in studies}
                result.missing = [
                    n for n in self.config.optuna.studies if n != "*" and n not in found
                ]
                for study in studies:
                    new = self.poll_study(study, now)
                    result.new[study.name] = result.new.get(study.name, 0) + new
        except StorageError as exc:
            result.errors.append(str(exc))
            self.close()
        result.seconds = time.perf_counter() - started
        self._record_health(result, now if now is not None else time.time())
        return result

    def _cursor(self, study: StudyRef) -> dict[str, Any]:
        """The study's cursor, started afresh (next generation) if the study was re-created."""
        fresh = {"study_id": study.study_id, "max_trial_id": -1, "lag_trial_id": -1, "open_ids": []}
        cursor = self.store.get_cursor(self.storage, study.name)
        fingerprint = self.source.fingerprint(study)
        if cursor is None:
            return fresh | {"generation": 0, "fingerprint": fingerprint}
        recreated = cursor["study_id"] != study.study_id or (
            cursor["fingerprint"] is not None and cursor["fingerprint"] != fingerprint
        )
        if recreated:
            return fresh | {"generation": cursor["generation"] + 1, "fingerprint": fingerprint}
        return cursor | {"fingerprint": fingerprint}

    def poll_study(self, study: StudyRef, now: float | None = None) -> int:
        """Record the study's newly finished trials; returns how many were new."""
        cursor = self._cursor(study)
        heads = self.source.heads(study, cursor["lag_trial_id"], cursor["open_ids"])
        wanted_states = set(self.config.optuna.states)
        still_open = {h.trial_id for h in heads if h.state not in FINAL_STATES}
        ready = [h for h in heads if h.state in wanted_states]
        generation = cursor["generation"]
        known = self.store.known_numbers(study.name, generation, [h.number for h in ready])
        ready = [h for h in ready if h.number not in known]
        records = self.source.details(study, ready) if ready else []
        stages, stage_pos, first_status = plan.initial_stages(self.config)
        stamp = now if now is not None else time.time()
        new = 0
        highest = max([cursor["max_trial_id"], *(h.trial_id for h in heads)])
        updated = cursor | {
            "max_trial_id": highest,
            "lag_trial_id": cursor["max_trial_id"],
            "open_ids": sorted(still_open),
        }
        if not records and updated == cursor:
            return 0  # nothing new and nothing moved: no write at all
        with self.store.transaction():
            for record in sorted(records, key=lambda r: r.trial_id):
                fields = trial_fields(record, study, self.config) | {"generation": generation}
                if self.store.add_trial(fields, stages, stage_pos, stamp,
                                        first_status) is not None:
                    new += 1
            self.store.save_cursor(self.storage, study.name, updated, stamp)
        return new

    def _record_health(self, result: DiscoveryResult, now: float) -> None:
        if result.errors:
            status, message = "error", result.errors[0]
        elif result.missing:
            status = "warning"
            message = f"studies not in the storage yet: {', '.join(result.missing)}"
        else:
            status, message = "ok", f"{result.total} new trial(s) in {result.seconds:.3f}s"
        self.store.record_check("discovery", status, message, now, ok=not result.errors)
