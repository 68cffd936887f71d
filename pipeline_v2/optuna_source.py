"""Read-only adapters over an Optuna storage: its RDB schema (SQLAlchemy Core) or a journal file.

Both answer the same two questions at a cost that grows with what is new: which studies exist,
and which trials of a study have ids above a watermark or in a given set. Nothing here writes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline_v2.errors import StorageError

# Optuna RDB schema revisions whose trials/values/params/attributes columns we read.
KNOWN_REVISIONS = frozenset({"v3.0.0.c", "v3.0.0.d", "v3.2.0.a"})
BUSY_TIMEOUT_S = 10.0
FINAL_STATES = frozenset({"COMPLETE", "PRUNED", "FAIL"})
_CHUNK = 500


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

    def studies(self, names: Sequence[str]) -> list[StudyRef]: ...

    def fingerprint(self, study: StudyRef) -> str | None: ...

    def heads(self, study: StudyRef, above: int, ids: Iterable[int]) -> list[TrialHead]: ...

    def details(self, study: StudyRef, heads: Sequence[TrialHead]) -> list[TrialRecord]: ...

    def session(self) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...


def open_source(url: str) -> TrialSource:
    """The adapter for an Optuna storage URL or journal file path."""
    if "://" not in url:
        return JournalSource(url)
    if url.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql"):
        return RdbSource(url)
    raise StorageError(
        f'optuna.storage: unsupported storage "{url}" '
        "(expected sqlite://, postgresql://, mysql:// or a journal file path)"
    )


def external_param(value: float, distribution_json: str) -> Any:
    """Optuna stores params in an internal float form; turn one back into what the user saw."""
    dist = json.loads(distribution_json)
    name, attrs = dist.get("name", ""), dist.get("attributes", {})
    if name == "CategoricalDistribution":
        return attrs["choices"][int(value)]
    if name.startswith("Int"):
        return int(value)
    return float(value)


class RdbSource:
    """Optuna's RDB schema read with SQLAlchemy Core, after checking its revision."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self._sa = sa
        self._conn: Any = None
        connect_args: dict[str, Any] = {}
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
            if not os.path.exists(path):
                raise StorageError(f'optuna.storage: no SQLite file at "{path}"')
            # Read-only URI: this process can never write to the workers' storage.
            url = f"sqlite:///file:{path}?mode=ro&uri=true"
            connect_args = {"timeout": BUSY_TIMEOUT_S}
        try:
            self.engine = sa.create_engine(url, connect_args=connect_args)
            with self.engine.connect() as conn:
                revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"optuna.storage: cannot read {url!r}: {_first_line(exc)}") from None
        if revision not in KNOWN_REVISIONS:
            raise StorageError(
                f"optuna.storage: unknown Optuna schema revision {revision!r} "
                f"(known: {', '.join(sorted(KNOWN_REVISIONS))}); upgrade pipeline_v2"
            )

    def _rows(self, sql: str, **params: Any) -> list[Any]:
        sa = self._sa
        statement = sa.text(sql)
        for key, value in params.items():
            if isinstance(value, list):
                statement = statement.bindparams(sa.bindparam(key, expanding=True))
        try:
            if self._conn is not None:
                return list(self._conn.execute(statement, params))
            with self.engine.connect() as conn:
                return list(conn.execute(statement, params))
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"optuna.storage: query failed: {_first_line(exc)}") from None

    @contextmanager
    def session(self) -> Iterator[None]:
        """One connection and one read snapshot for a whole poll, released at its end."""
        try:
            conn = self.engine.connect()
        except self._sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"optuna.storage: cannot connect: {_first_line(exc)}") from None
        self._conn = conn
        try:
            yield
        finally:
            self._conn = None
            conn.close()  # ends the read transaction, so writers' checkpoints never wait on us

    def studies(self, names: Sequence[str]) -> list[StudyRef]:
        if list(names) == ["*"]:
            rows = self._rows("SELECT study_id, study_name FROM studies ORDER BY study_id")
        else:
            rows = self._rows(
                "SELECT study_id, study_name FROM studies WHERE study_name IN :names",
                names=list(names),
            )
        return [StudyRef(name, study_id) for study_id, name in rows]

    def fingerprint(self, study: StudyRef) -> str | None:
        """The study's first trial (id and start): it changes when the study is re-created."""
        rows = self._rows(
            "SELECT trial_id, datetime_start FROM trials WHERE study_id = :sid"
            " ORDER BY trial_id LIMIT 1",
            sid=study.study_id,
        )
        return f"{rows[0][0]}@{rows[0][1]}" if rows else None

    def heads(self, study: StudyRef, above: int, ids: Iterable[int]) -> list[TrialHead]:
        # (study_id, trial_id) is a range seek on Optuna's study_id index.
        rows = self._rows(
            "SELECT trial_id, number, state FROM trials"
            " WHERE study_id = :sid AND trial_id > :above",
            sid=study.study_id,
            above=above,
        )
        wanted = sorted(set(ids) - {row[0] for row in rows})
        for chunk in _chunks(wanted):
            rows += self._rows(
                "SELECT trial_id, number, state FROM trials WHERE trial_id IN :ids", ids=chunk
            )
        return [TrialHead(int(r[0]), int(r[1]), str(r[2])) for r in rows]

    def details(self, study: StudyRef, heads: Sequence[TrialHead]) -> list[TrialRecord]:
        records = {h.trial_id: TrialRecord(h.trial_id, h.number, h.state) for h in heads}
        for chunk in _chunks(list(records)):
            for tid, done in self._rows(
                "SELECT trial_id, datetime_complete FROM trials WHERE trial_id IN :ids", ids=chunk
            ):
                records[tid].datetime_complete = None if done is None else str(done)
            values: dict[int, dict[int, float]] = {}
            for tid, objective, value, kind in self._rows(
                "SELECT trial_id, objective, value, value_type FROM trial_values"
                " WHERE trial_id IN :ids",
                ids=chunk,
            ):
                values.setdefault(tid, {})[objective] = _stored_value(value, kind)
            for tid, by_objective in values.items():
                records[tid].values = [by_objective[k] for k in sorted(by_objective)]
            for tid, name, value, dist in self._rows(
                "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params"
                " WHERE trial_id IN :ids ORDER BY param_id",
                ids=chunk,
            ):
                records[tid].params[name] = external_param(value, dist)
            for tid, key, value_json in self._rows(
                "SELECT trial_id, key, value_json FROM trial_user_attributes"
                " WHERE trial_id IN :ids",
                ids=chunk,
            ):
                records[tid].user_attrs[key] = json.loads(value_json)
            for tid, value_json in self._rows(
                "SELECT trial_id, value_json FROM trial_system_attributes"
                " WHERE trial_id IN :ids AND key = 'constraints'",
                ids=chunk,
            ):
                records[tid].constraints = json.loads(value_json)
        return list(records.values())

    def close(self) -> None:
        self.engine.dispose()


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
        every = [StudyRef(s.study_name, s._study_id) for s in self.storage.get_all_studies()]
        return every if list(names) == ["*"] else [s for s in every if s.name in names]

    def _trials(self, study: StudyRef) -> list[Any]:
        return self.storage.get_all_trials(study.study_id, deepcopy=False)

    def fingerprint(self, study: StudyRef) -> str | None:
        """The study's first trial (id and start): it changes when the study is re-created."""
        trials = self._trials(study)
        return f"{trials[0]._trial_id}@{trials[0].datetime_start}" if trials else None

    def heads(self, study: StudyRef, above: int, ids: Iterable[int]) -> list[TrialHead]:
        wanted = set(ids)
        return [
            TrialHead(t._trial_id, t.number, t.state.name)
            for t in self._trials(study)
            if t._trial_id > above or t._trial_id in wanted
        ]

    def details(self, study: StudyRef, heads: Sequence[TrialHead]) -> list[TrialRecord]:
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
        pass


def _stored_value(value: float | None, kind: str) -> float:
    if kind == "INF_POS":
        return math.inf
    if kind == "INF_NEG":
        return -math.inf
    return math.nan if value is None else float(value)


def _chunks(items: list[int]) -> Iterable[list[int]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def study_values(url: str, study: str) -> tuple[int, list[float]]:
    """(trials tried in the newest study of this name, its COMPLETE trials' first values)."""
    source = open_source(url)
    try:
        refs = [r for r in source.studies([study])]
        if not refs:
            raise StorageError(f'optuna.storage: no study "{study}"')
        ref = max(refs, key=lambda r: r.study_id)
        if isinstance(source, RdbSource):
            tried = source._rows(
                "SELECT COUNT(*) FROM trials WHERE study_id = :sid AND state IN"
                " ('COMPLETE', 'PRUNED', 'FAIL')", sid=ref.study_id)[0][0]
            rows = source._rows(
                "SELECT v.value FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id"
                " WHERE t.study_id = :sid AND t.state = 'COMPLETE' AND v.objective = 0"
                " AND v.value_type = 'FINITE'", sid=ref.study_id)
            return int(tried), [float(r[0]) for r in rows if r[0] is not None]
        trials = source._trials(ref)  # type: ignore[attr-defined]
        done = [t for t in trials if t.state.name in FINAL_STATES]
        values = [t.values[0] for t in done if t.state.name == "COMPLETE" and t.values]
        return len(done), [v for v in values if math.isfinite(v)]
    finally:
        source.close()
