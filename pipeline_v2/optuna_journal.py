"""The read-only adapter for an Optuna journal-file storage (see `optuna_source`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from pipeline_v2.errors import StorageError
from pipeline_v2.optuna_records import StudyRef, TrialHead, TrialRecord


class JournalSource:
    """A journal-file storage through Optuna's own reader, which replays only what is new."""

    def __init__(self, path: str) -> None:
        if not os.path.exists(path):
            raise StorageError(f'optuna.storage: no journal file at "{path}"')
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        try:
            self.storage = JournalStorage(JournalFileBackend(path))
        except Exception as exc:  # Optuna raises several kinds for a corrupt journal
            raise StorageError(f"optuna.storage: cannot read journal {path!r}: {exc}") from None

    def studies(self, names: Sequence[str]) -> list[StudyRef]:
        """The wanted studies that exist ("*": every study)."""
        every = [StudyRef(s.study_name, s._study_id) for s in self.storage.get_all_studies()]
        return every if list(names) == ["*"] else [s for s in every if s.name in names]

    def _trials(self, study: StudyRef) -> list[Any]:
        return self.storage.get_all_trials(study.study_id, deepcopy=False)

    def fingerprint(self, study: StudyRef) -> str | None:
        """The study's first trial (id and start): it changes when the study is re-created."""
        trials = self._trials(study)
        return f"{trials[0]._trial_id}@{trials[0].datetime_start}" if trials else None

    def heads(self, study: StudyRef, above: int, ids: Iterable[int],
              limit: int | None = None) -> list[TrialHead]:
        """Trials above an id (the first `limit` of them, by id), plus these ids."""
        wanted = set(ids)
        trials = self._trials(study)
        newer = sorted((t for t in trials if t._trial_id > above), key=lambda t: t._trial_id)
        newer = newer if limit is None else newer[:limit]
        seen = {t._trial_id for t in newer}
        listed = [t for t in trials if t._trial_id in wanted and t._trial_id not in seen]
        return [TrialHead(t._trial_id, t.number, t.state.name) for t in [*newer, *listed]]

    def details(self, study: StudyRef, heads: Sequence[TrialHead]) -> list[TrialRecord]:
        """Full records (values, params, attrs) of these trials."""
        wanted = {h.trial_id for h in heads}
        records = []
        for t in self._trials(study):
            if t._trial_id not in wanted:
                continue
            done = t.datetime_complete
            records.append(
                TrialRecord(
                    t._trial_id,
                    t.number,
                    t.state.name,
                    values=list(t.values) if t.values is not None else None,
                    params=dict(t.params),
                    user_attrs=dict(t.user_attrs),
                    constraints=t.system_attrs.get("constraints"),
                    datetime_complete=None if done is None else str(done),
                )
            )
        return records

    def session(self) -> AbstractContextManager[None]:
        """Nothing to hold: the journal reader keeps its own state."""
        return nullcontext()

    def close(self) -> None:
        """Nothing to release."""
