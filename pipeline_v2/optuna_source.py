"""Read-only adapters over an Optuna storage: its RDB schema (SQLAlchemy Core) or a journal file.

Both answer the same two questions at a cost that grows with what is new: which studies exist,
and which trials of a study have ids above a watermark or in a given set. Nothing here writes:
a PostgreSQL or MySQL role with only SELECT on Optuna's tables is enough.

Why an id watermark is safe on a server storage too: Optuna creates a trial under a row lock on
its study (`SELECT ... FOR UPDATE`, then INSERT, then COMMIT), so within one study trial ids are
committed in id order, as SQLite's single writer guarantees by itself.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pipeline_v2.errors import StorageError, StorageUnavailable
from pipeline_v2.optuna_journal import JournalSource
from pipeline_v2.optuna_records import StudyRef, TrialHead, TrialRecord, TrialSource
from pipeline_v2.redact import redact_url

# Optuna RDB schema revisions whose trials/values/params/attributes columns we read.
KNOWN_REVISIONS = frozenset({"v3.0.0.c", "v3.0.0.d", "v3.2.0.a"})
BUSY_TIMEOUT_S = 10.0  # stages reading the storage wait for a writer
# A writer holding an exclusive lock must never stall the daemon's loop: discovery waits this
# long, then skips the poll (the next one tries again).
POLL_BUSY_TIMEOUT_S = 0.1
SERVER_CONNECT_TIMEOUT_S = 2
SERVER_QUERY_TIMEOUT_S = 10
FINAL_STATES = frozenset({"COMPLETE", "PRUNED", "FAIL"})
_CHUNK = 500  # ids per IN list: SQLite's bound-variable limit
_SERVER_CHUNK = 10_000  # a server takes long lists; fewer round trips on a catch-up poll


# Server dialects: the pip extra that installs the driver we default to, and that driver.
DRIVER_EXTRAS = {"postgresql": "postgres", "mysql": "mysql"}
_DEFAULT_DRIVERS = {"postgresql": ("psycopg2", "psycopg2"), "mysql": ("pymysql", "pymysql")}


def open_source(url: str, busy_timeout: float = BUSY_TIMEOUT_S) -> TrialSource:
    """The adapter for an Optuna storage URL or journal file path."""
    if "://" not in url:
        return JournalSource(url)
    if url.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql"):
        return RdbSource(url, busy_timeout)
    raise StorageError(
        f'optuna.storage: unsupported storage "{redact_url(url)}" '
        "(expected sqlite://, postgresql://, mysql:// or a journal file path)"
    )


def _scrub(text: str, url: str) -> str:
    """A driver's message with the URL's password (if any) masked, wherever it appears."""
    import sqlalchemy as sa

    try:
        password = sa.engine.make_url(url).password
    except sa.exc.ArgumentError:
        return text
    return text.replace(str(password), "***") if password else text


def server_url(url: str) -> Any:
    """A server URL with our default driver named (`mysql://` means PyMySQL unless MySQLdb is
    installed); raises StorageError naming the extra to install when the driver is missing."""
    import importlib.util

    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise StorageError(f"optuna.storage: not a storage URL: {_first_line(exc)}") from None
    dialect, _, driver = parsed.drivername.partition("+")
    if dialect not in DRIVER_EXTRAS:
        return parsed
    default_module, default_driver = _DEFAULT_DRIVERS[dialect]
    if not driver and dialect == "mysql" and importlib.util.find_spec("MySQLdb") is not None:
        driver = "mysqldb"  # SQLAlchemy's own default for mysql://, when it is installed
    if not driver:
        driver = default_driver
        parsed = parsed.set(drivername=f"{dialect}+{driver}")
    try:
        parsed.get_dialect().import_dbapi()
    except ImportError:
        extra = DRIVER_EXTRAS[dialect]
        raise StorageError(
            f"optuna.storage: {dialect}+{driver} needs its driver: "
            f"pip install 'pipeline_v2[{extra}]'"
        ) from None
    except sa.exc.NoSuchModuleError:
        raise StorageError(
            f'optuna.storage: unknown driver "{parsed.drivername}" in "{redact_url(url)}"'
        ) from None
    return parsed


def storage_file(url: str) -> str | None:
    """The local file behind a storage URL (SQLite or journal), None for a server."""
    if "://" not in url:
        return url
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///").split("?", 1)[0]
    return None


def file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a file, None if it is missing: a replaced file has a new one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def external_param(value: float, distribution_json: str) -> Any:
    """Optuna stores params in an internal float form; turn one back into what the user saw."""
    kind, choices = _distribution(distribution_json)
    if kind == "categorical":
        return choices[int(value)]
    return int(value) if kind == "int" else float(value)


@functools.lru_cache(maxsize=1024)
def _distribution(distribution_json: str) -> tuple[str, tuple[Any, ...]]:
    """A distribution's kind and choices, parsed once per distinct text (a study has few)."""
    dist = json.loads(distribution_json)
    name, attrs = dist.get("name", ""), dist.get("attributes", {})
    if name == "CategoricalDistribution":
        return "categorical", tuple(attrs["choices"])
    return ("int" if name.startswith("Int") else "float"), ()


class RdbSource:
    """Optuna's RDB schema read with SQLAlchemy Core, after checking its revision."""

    def __init__(self, url: str, busy_timeout: float = BUSY_TIMEOUT_S) -> None:
        import sqlalchemy as sa

        self._sa = sa
        self.busy_timeout = busy_timeout
        self._conn: Any = None
        connect_args: dict[str, Any] = {}
        shown = redact_url(url)
        target: Any = url
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
            if not os.path.exists(path):
                raise StorageError(f'optuna.storage: no SQLite file at "{path}"')
            # Read-only URI: this process can never write to the workers' storage.
            target = f"sqlite:///file:{path}?mode=ro&uri=true"
            connect_args = {"timeout": busy_timeout}
        else:
            target = server_url(url)
            # A server that does not answer, or a query stuck behind a lock, must not hold the
            # daemon's loop for long: the poll fails and the next one tries again.
            connect_args = {"connect_timeout": SERVER_CONNECT_TIMEOUT_S}
            if target.get_backend_name() == "postgresql":
                connect_args["options"] = f"-c statement_timeout={SERVER_QUERY_TIMEOUT_S * 1000}"
            else:
                connect_args["read_timeout"] = SERVER_QUERY_TIMEOUT_S
        self._url = url
        try:
            self.engine = sa.create_engine(target, connect_args=connect_args,
                                           pool_pre_ping=not url.startswith("sqlite"))
            with self.engine.connect() as conn:
                revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        except sa.exc.SQLAlchemyError as exc:
            raise _storage_error(f"cannot read '{shown}'", exc, busy_timeout, url) from None
        self._chunk = _CHUNK if self.engine.dialect.name == "sqlite" else _SERVER_CHUNK
        self._study_match = ("study_id + 0 = :sid" if self.engine.dialect.name == "postgresql"
                             else "study_id = :sid")
        # `key` is a reserved word in MySQL: quote it the way this server's dialect does.
        self._key = self.engine.dialect.identifier_preparer.quote("key")
        if revision not in KNOWN_REVISIONS:
            raise StorageError(
                f"optuna.storage: unknown Optuna schema revision {revision!r} "
                f"(known: {', '.join(sorted(KNOWN_REVISIONS))}); upgrade pipeline_v2"
            )

    def _rows(self, sql: str, **params: Any) -> list[Any]:
        sa = self._sa
        expanding = [key for key, value in params.items() if isinstance(value, list)]
        if self._conn is not None and not expanding and self.engine.dialect.name == "sqlite":
            return self._sqlite_rows(sql, params)
        statement = sa.text(sql)
        for key in expanding:
            statement = statement.bindparams(sa.bindparam(key, expanding=True))
        try:
            if self._conn is not None:
                return list(self._conn.execute(statement, params))
            with self.engine.connect() as conn:
                return list(conn.execute(statement, params))
        except sa.exc.SQLAlchemyError as exc:
            raise _storage_error("query failed", exc, self.busy_timeout, self._url) from None

    def _sqlite_rows(self, sql: str, params: dict[str, Any]) -> list[Any]:
        """The same query straight through the session's sqlite3 connection (it takes the
        same `:name` parameters): a catch-up reads millions of rows, and SQLAlchemy's row
        objects cost several times what sqlite3's tuples do."""
        try:
            return self._conn.connection.driver_connection.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _storage_error("query failed", exc, self.busy_timeout, self._url) from None

    @contextmanager
    def session(self) -> Iterator[None]:
        """One connection and one read snapshot for a whole poll, released at its end."""
        try:
            conn = self.engine.connect()
        except self._sa.exc.SQLAlchemyError as exc:
            raise _storage_error("cannot connect", exc, self.busy_timeout, self._url) from None
        self._conn = conn
        try:
            yield
        finally:
            self._conn = None
            conn.close()  # ends the read transaction, so writers' checkpoints never wait on us

    def studies(self, names: Sequence[str]) -> list[StudyRef]:
        """The wanted studies that exist ("*": every study)."""
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

    def heads(self, study: StudyRef, above: int, ids: Iterable[int],
              limit: int | None = None) -> list[TrialHead]:
        """Trials above an id (the first `limit` of them, by id), plus these ids."""
        # SQLite and InnoDB: (study_id, trial_id) is a range seek on Optuna's study_id index,
        # whose entries carry the row id. PostgreSQL's do not: it would read every trial of the
        # study, so there `study_id + 0` steers it to the primary key range instead.
        rows = self._rows(
            "SELECT trial_id, number, state FROM trials"
            f" WHERE {self._study_match} AND trial_id > :above ORDER BY trial_id LIMIT :limit",
            sid=study.study_id,
            above=above,
            limit=-1 if limit is None else limit,
        )
        wanted = sorted(set(ids) - {row[0] for row in rows})
        for chunk in _chunks(wanted, self._chunk):
            rows += self._rows(
                "SELECT trial_id, number, state FROM trials WHERE trial_id IN :ids", ids=chunk
            )
        return [TrialHead(int(r[0]), int(r[1]), str(r[2])) for r in rows]

    def details(self, study: StudyRef, heads: Sequence[TrialHead]) -> list[TrialRecord]:
        """Full records (values, params, attrs) of these trials.

        A catch-up page is a dense run of trial ids: it is read as one id range per table (an
        index range on trial_id in each of Optuna's tables), rows of other studies' trials in
        the range dropped. Scattered ids are read in IN lists instead."""
        records = {h.trial_id: TrialRecord(h.trial_id, h.number, h.state) for h in heads}
        if not records:
            return []
        lo, hi = min(records), max(records)
        if hi - lo < 2 * len(records):
            self._read_details(records, "BETWEEN :lo AND :hi", {"lo": lo, "hi": hi})
        else:
            for chunk in _chunks(list(records), self._chunk):
                self._read_details(records, "IN :ids", {"ids": chunk})
        return list(records.values())

    def _read_details(self, records: dict[int, TrialRecord], match: str,
                      params: dict[str, Any]) -> None:
        """Fill in the records of the trials whose ids match `trial_id {match}`."""
        for tid, done in self._rows(
            f"SELECT trial_id, datetime_complete FROM trials WHERE trial_id {match}", **params
        ):
            if tid in records:
                records[tid].datetime_complete = None if done is None else str(done)
        values: dict[int, dict[int, float]] = {}
        for tid, objective, value, kind in self._rows(
            "SELECT trial_id, objective, value, value_type FROM trial_values"
            f" WHERE trial_id {match}", **params
        ):
            if tid in records:
                values.setdefault(tid, {})[objective] = _stored_value(value, kind)
        for tid, by_objective in values.items():
            records[tid].values = [by_objective[k] for k in sorted(by_objective)]
        for tid, name, value, dist in self._rows(
            "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params"
            f" WHERE trial_id {match} ORDER BY param_id", **params
        ):
            if tid in records:
                records[tid].params[name] = external_param(value, dist)
        for tid, key, value_json in self._rows(
            f"SELECT trial_id, {self._key}, value_json FROM trial_user_attributes"
            f" WHERE trial_id {match}", **params
        ):
            if tid in records:
                records[tid].user_attrs[key] = json.loads(value_json)
        for tid, value_json in self._rows(
            "SELECT trial_id, value_json FROM trial_system_attributes"
            f" WHERE trial_id {match} AND {self._key} = 'constraints'", **params
        ):
            if tid in records:
                records[tid].constraints = json.loads(value_json)

    def close(self) -> None:
        """Release the engine."""
        self.engine.dispose()


def _stored_value(value: float | None, kind: str) -> float:
    if kind == "INF_POS":
        return math.inf
    if kind == "INF_NEG":
        return -math.inf
    return math.nan if value is None else float(value)


def _chunks(items: list[int], size: int = _CHUNK) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _storage_error(what: str, exc: Exception, waited: float, url: str) -> StorageError:
    """A lock held by a writer is "busy, skipped": not an error in the storage. The URL's
    password never reaches the message, whatever the driver put in it."""
    if "database is locked" in str(exc) or "database is busy" in str(exc):
        return StorageUnavailable(
            f"optuna.storage: busy (a writer holds a lock for more than {waited:g}s); "
            "this poll was skipped, the next one tries again")
    return StorageError(f"optuna.storage: {what}: {_scrub(_first_line(exc), url)}")


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
