"""What an Optuna storage adapter returns, and the protocol every adapter follows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class StudyRef:
    """A study as the storage knows it; a re-created study has a new `study_id`."""

    name: str
    study_id: int


@dataclass(frozen=True)
class TrialHead:
    """The cheap part of a trial: enough to decide whether to read the rest."""

    trial_id: int
    number: int
    state: str


@dataclass
class TrialRecord:
    """Everything discovery records about a trial."""

    trial_id: int
    number: int
    state: str
    values: list[float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    constraints: list[float] | None = None
    datetime_complete: str | None = None


class TrialSource(Protocol):
    """What discovery needs from a storage."""

    def studies(self, names: Sequence[str]) -> list[StudyRef]:
        """The wanted studies that exist ("*": every study)."""

    def fingerprint(self, study: StudyRef) -> str | None:
        """The study's first trial (id and start), to notice a study re-created under its name."""

    def heads(self, study: StudyRef, above: int, ids: Iterable[int],
              limit: int | None = None) -> list[TrialHead]:
        """Trials above an id (the first `limit` of them, by id), plus these ids."""

    def details(self, study: StudyRef, heads: Sequence[TrialHead]) -> list[TrialRecord]:
        """Full records (values, params, attrs) of these trials."""

    def session(self) -> AbstractContextManager[None]:
        """One consistent read across several calls."""

    def close(self) -> None:
        """Release the storage."""
