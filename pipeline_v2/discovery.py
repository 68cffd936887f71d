"""Incremental discovery: every trial in a wanted state recorded once, at O(new) cost per poll.

Per study the state DB keeps a cursor: the highest trial id seen, the highest as of the poll
before (re-read once, so a trial whose insert committed late is still seen), and the ids seen
unfinished (RUNNING / WAITING), which are re-checked every poll until they finish.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_v2 import plan
from pipeline_v2.config import Config
from pipeline_v2.errors import StorageError, StorageUnavailable
from pipeline_v2.logs import get_logger
from pipeline_v2.optuna_source import (
    FINAL_STATES,
    POLL_BUSY_TIMEOUT_S,
    StudyRef,
    TrialHead,
    TrialRecord,
    TrialSource,
    file_identity,
    open_source,
    redact_url,
    storage_file,
)
from pipeline_v2.store import Store
from pipeline_v2.templates import base_fields

log = get_logger("discovery")

PAGE = 2000  # trials read and recorded per transaction
SLICE_S = 0.05  # a daemon poll stops at the first page boundary past this (at least one page)


@dataclass
class DiscoveryResult:
    """What one pass found."""

    new: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unavailable: bool = False  # missing or busy for now: degraded, retried next poll
    more: bool = False  # a catch-up stopped at its time slice: poll again next turn

    @property
    def total(self) -> int:
        """New trials over all studies."""
        return sum(self.new.values())


def render_model_dir(template: str, record: TrialRecord, study: str, config: Config,
                     resolve: Callable[[str], str] | None = None) -> str:
    """Resolve the `optuna.model_dir` template for one trial (relative to the config folder)."""
    values = record.values or [None]
    text = template.format(**base_fields(study, record.number, record.trial_id, values[0],
                                         record.params, record.user_attrs))
    return resolve(text) if resolve is not None else str(config.path(text))


class PathResolver:
    """`config.path(text)` for many model dirs, resolving each parent folder once.

    Path.resolve() costs a system call per path component; a page of trials shares one parent
    ("models/"), so per trial only the last component is looked at: when it is a symlink (or
    the path has "..") the whole path is resolved as before. One per page: a folder re-linked
    between pages is seen on the next."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._parents: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        joined = os.path.join(self.config.base_dir, os.path.expanduser(text))
        path = os.path.normpath(joined)  # "a/./b/" -> "a/b": islink() of "link/" is False
        parent, name = os.path.split(path)
        if ".." in joined.split(os.sep) or not name or os.path.islink(path):
            return str(self.config.path(text))  # what resolve() must work out step by step
        resolved = self._parents.get(parent)
        if resolved is None:
            resolved = self._parents[parent] = str(Path(parent).resolve())
        return os.path.join(resolved, name)


def trial_fields(record: TrialRecord, study: StudyRef, config: Config,
                 resolve: Callable[[str], str] | None = None) -> dict[str, Any]:
    """The state DB row for a discovered trial, with flags for anything suspicious."""
    flags: list[str] = []
    values = record.values
    if values is not None and any(v is not None and not math.isfinite(v) for v in values):
        flags.append("non_finite_value")
    try:
        model_dir = render_model_dir(config.optuna.model_dir, record, study.name, config,
                                     resolve)
    except Exception as exc:  # any template error is this trial's flag, never the poll's
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

    def __init__(self, config: Config, store: Store, source: TrialSource | None = None,
                 slice_seconds: float | None = None) -> None:
        self.config = config
        self.store = store
        # The daemon's loop must not wait out a first catch-up of a million trials: a poll stops
        # after this much work (pages that record new trials) and says `more`. None: no limit.
        self.slice_seconds = slice_seconds
        self.storage = config.storage_url
        # Cursors are keyed by the URL without its password: rotating it keeps the cursors.
        self.cursor_key = redact_url(self.storage)
        self._source = source
        self._file = storage_file(self.storage) if source is None else None
        self._identity: tuple[int, int] | None = None

    @property
    def source(self) -> TrialSource:
        """The storage adapter, opened on first use (and again after an error)."""
        if self._source is None:
            identity = file_identity(self._file) if self._file else None
            self._source = open_source(self.storage, POLL_BUSY_TIMEOUT_S)
            self._identity = identity
        return self._source

    def _check_file(self) -> None:
        """A storage file deleted or replaced under us: reading on would read a dead inode."""
        if self._file is None or self._identity is None:
            return
        identity = file_identity(self._file)
        if identity == self._identity:
            return
        self.close()
        if identity is None:
            raise StorageUnavailable(
                f'optuna.storage: the storage file "{self._file}" is missing (deleted or moved '
                "while the daemon runs); discovery resumes when it is back")
        log.warning("storage_replaced", file=self._file)
        self._identity = None

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
            self._check_file()
            with self.source.session():
                studies = self.source.studies(self.config.optuna.studies)
                found = {s.name for s in studies}
                result.missing = [
                    n for n in self.config.optuna.studies if n != "*" and n not in found
                ]
                deadline = (None if self.slice_seconds is None
                            else time.perf_counter() + self.slice_seconds)
                for study in studies:  # each goes at least one page beyond its cursor
                    new = self._poll_one(study, now, result, deadline)
                    result.new[study.name] = result.new.get(study.name, 0) + new
        except StorageError as exc:
            result.errors.append(str(exc))
            result.unavailable = isinstance(exc, StorageUnavailable)
            self.close()
        result.seconds = time.perf_counter() - started
        self._record_health(result, now if now is not None else time.time())
        return result

    def _poll_one(self, study: StudyRef, now: float | None, result: DiscoveryResult,
                  deadline: float | None) -> int:
        """One study; what it raises (beyond the storage failing) is its error, not the poll's."""
        try:
            new, more = self.poll_study(study, now, deadline)
            result.more |= more
            return new
        except StorageError:
            raise
        except Exception as exc:
            log.exception("study_poll_failed", study=study.name)
            result.errors.append(f"study {study.name!r}: {type(exc).__name__}: {exc}")
            return 0

    def _cursor(self, study: StudyRef) -> dict[str, Any]:
        """The study's cursor, started afresh (next generation) if the study was re-created."""
        fresh = {"study_id": study.study_id, "max_trial_id": -1, "lag_trial_id": -1, "open_ids": []}
        cursor = self.store.get_cursor(self.cursor_key, study.name)
        fingerprint = self.source.fingerprint(study)
        if cursor is None:
            return fresh | {"generation": 0, "fingerprint": fingerprint}
        recreated = cursor["study_id"] != study.study_id or (
            cursor["fingerprint"] is not None and cursor["fingerprint"] != fingerprint
        )
        if recreated:
            return fresh | {"generation": cursor["generation"] + 1, "fingerprint": fingerprint}
        return cursor | {"fingerprint": fingerprint}

    def poll_study(self, study: StudyRef, now: float | None = None,
                   deadline: float | None = None) -> tuple[int, bool]:
        """Record the study's newly finished trials: (how many were new, whether more remain).

        Trials are read and recorded a page at a time (one transaction each), so a first
        catch-up of a million trials holds one page in memory, never the whole study. Past the
        `deadline` (perf_counter) the poll stops after a page beyond the cursor and saves where
        it got; the next poll re-reads what this one found once (as after any poll: a trial
        whose insert committed late is still seen), which costs heads only, and goes on.
        """
        cursor = self._cursor(study)
        stamp = now if now is not None else time.time()
        after, ids = cursor["lag_trial_id"], cursor["open_ids"]
        highest, still_open, new = cursor["max_trial_id"], set(), 0
        more = False
        while True:
            heads = self.source.heads(study, after, ids, limit=PAGE)
            newer = [h.trial_id for h in heads if h.trial_id > after]
            ids = ()  # the open ids are re-read with the first page only
            still_open |= {h.trial_id for h in heads if h.state not in FINAL_STATES}
            highest = max([highest, *(h.trial_id for h in heads)])
            new += self._record(study, cursor["generation"], heads, stamp)
            if len(newer) < PAGE:
                break
            beyond = highest > cursor["max_trial_id"]
            if deadline is not None and beyond and time.perf_counter() >= deadline:
                more = True
                break
            after = max(newer)
        updated = cursor | {
            "max_trial_id": highest,
            "lag_trial_id": cursor["max_trial_id"],
            "open_ids": sorted(still_open),
        }
        if updated != cursor:  # nothing new and nothing moved: no write at all
            with self.store.transaction():
                self.store.save_cursor(self.cursor_key, study.name, updated, stamp)
        return new, more

    def _record(self, study: StudyRef, generation: int, heads: list[TrialHead],
                stamp: float) -> int:
        """Record the finished trials among these heads that the state DB does not know."""
        wanted_states = set(self.config.optuna.states)
        ready = [h for h in heads if h.state in wanted_states]
        known = self.store.known_numbers(study.name, generation, [h.number for h in ready])
        ready = [h for h in ready if h.number not in known]
        if not ready:
            return 0
        records = self.source.details(study, ready)
        stages, stage_pos, first_status = plan.initial_stages(self.config)
        resolve = PathResolver(self.config)
        rows = [trial_fields(record, study, self.config, resolve) | {"generation": generation}
                for record in sorted(records, key=lambda r: r.trial_id)]
        return len(self.store.add_trials(rows, stages, stage_pos, stamp, first_status))

    def _record_health(self, result: DiscoveryResult, now: float) -> None:
        if result.errors:
            status = "degraded" if result.unavailable else "error"
            message = result.errors[0]
        elif result.missing:
            status = "warning"
            message = f"studies not in the storage yet: {', '.join(result.missing)}"
        else:
            status, message = "ok", f"{result.total} new trial(s) in {result.seconds:.3f}s"
        self.store.record_check("discovery", status, message, now, ok=not result.errors)
