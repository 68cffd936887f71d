"""Connection, migrations, transactions, status transitions and the event log."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline_v2 import schema
from pipeline_v2.errors import StoreError, TransitionError
from pipeline_v2.models import is_allowed
from pipeline_v2.wake import wake_daemon

if TYPE_CHECKING:
    from sqlite_utils import Database

SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 30.0


# What json.dumps(value, default=str) builds anew on every call, built once.
_ENCODE = json.JSONEncoder(default=str, allow_nan=True).encode


def dumps(value: Any) -> str | None:
    """JSON text for a column (None stays NULL)."""
    return None if value is None else _ENCODE(value)


def loads(text: str | None, default: Any = None) -> Any:
    """A JSON column back to Python."""
    return default if text is None else json.loads(text)


def sql_in(statuses: Iterable[Enum]) -> str:
    """`('a', 'b')` for an SQL `IN`: statuses are our own constants, never user input."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(statuses, key=lambda s: s.value)) + ")"


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


class BaseStore:
    """One connection to the state DB; open one per process or thread.

    Nothing is written before the file is known to be ours and sound: `check="quick"` runs
    `PRAGMA quick_check` (O(DB): commands that write, daemon start), `"light"` only reads the
    schema (read-only commands, which map a corrupt page read later to the same one line).
    """

    def __init__(self, path: Path | str, notify_kinds: Iterable[str] = (),
                 check: Literal["quick", "light"] = "quick") -> None:
        self.path = Path(path)
        self.notify_kinds = frozenset(notify_kinds)
        # A CLI's store wakes the daemon after each commit (see wake.py); the daemon's does not.
        self.wakes_daemon = False
        self._check_is_sqlite()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        self.conn = conn
        try:
            self._check_contents(check)
        except BaseException:
            conn.close()
            raise
        try:
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{self.path}: cannot use the state DB: {exc}") from None

    def _check_contents(self, check: str) -> None:
        """Refuse another program's SQLite file (Optuna's above all) and a corrupt one."""
        try:
            tables = {row[0] for row in self._all("SELECT name FROM sqlite_master"
                                                  " WHERE type = 'table'")}
            if {"alembic_version", "studies"} <= tables:
                raise StoreError(
                    f"{self.path}: this is an Optuna storage (it has Optuna's studies and "
                    "alembic_version tables), not a state DB; refusing to touch it (point "
                    "state_db at a file of its own, e.g. pipeline_v2.db)")
            if tables and "_sqlite_migrations" not in tables:
                raise StoreError(
                    f"{self.path}: an SQLite DB of another program (tables: "
                    f"{', '.join(sorted(tables)[:5])}); refusing to touch it (point state_db "
                    "at a file of its own)")
            if check == "quick" and tables:
                verdict = [str(row[0]) for row in self._all("PRAGMA quick_check(5)")]
                if verdict != ["ok"]:
                    raise StoreError(self.corrupt_message("; ".join(verdict)))
        except sqlite3.DatabaseError as exc:
            raise StoreError(self.corrupt_message(str(exc))) from None

    def corrupt_message(self, detail: str | None = None) -> str:
        """One line naming the file and what `PRAGMA quick_check` says about it."""
        if detail is None:
            try:
                detail = "; ".join(str(r[0]) for r in self._all("PRAGMA quick_check(5)"))
            except sqlite3.DatabaseError as exc:
                detail = str(exc)
        detail = " ".join(detail.split())  # quick_check's verdicts span lines; ours is one
        return f"{self.path}: the state DB is corrupt (PRAGMA quick_check: {detail})"

    def _check_is_sqlite(self) -> None:
        if self.path.is_dir():
            raise StoreError(f"{self.path}: state_db names a directory; expected an SQLite file "
                             "(e.g. pipeline_v2.db)")
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        # Read through SQLite, never open(): closing any other descriptor of the file would
        # drop every POSIX lock this process holds on it (a daemon's connections included),
        # and another process closing its connection would then delete the live WAL.
        probe = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            probe.execute("PRAGMA schema_version").fetchone()
        except sqlite3.DatabaseError as exc:
            if "not a database" not in str(exc):
                raise
            raise StoreError(
                f"{self.path}: not an SQLite database; refusing to touch it "
                "(point state_db at a new file)"
            ) from None
        finally:
            probe.close()

    def _migrate(self) -> None:
        known = schema.known_migrations()
        applied = schema.applied_names(self.conn)
        self._refuse_newer(applied, known)
        if len(applied) >= len(known):
            return
        from sqlite_utils import Database  # only now: it pulls pandas when installed

        # Two processes may open a new DB at once (a CLI beside a starting daemon): the write
        # lock comes first, then the pending list is read again under it.
        with self.transaction():
            applied = schema.applied_names(self.conn)
            self._refuse_newer(applied, known)
            schema.migration_set().apply(Database(self.conn))

    def _refuse_newer(self, applied: list[str], known: list[str]) -> None:
        newer = [name for name in applied if name not in known]
        if newer:
            raise StoreError(
                f"{self.path}: written by a newer pipeline_v2 (schema {newer[-1]!r}, this "
                f"version knows up to {known[-1]!r}); upgrade pipeline_v2 to use it"
            )

    @property
    def db(self) -> Database:
        """The connection as a sqlite-utils Database (imported on first use)."""
        from sqlite_utils import Database

        return Database(self.conn)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open on this connection."""
        return self.conn.in_transaction

    def _begin(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not _is_locked(exc):
                raise
            self._begin_retrying()

    def _begin_retrying(self) -> None:
        # busy_timeout already waits 30 s; this covers the rare SQLITE_BUSY it cannot.
        # tenacity is imported here, on this rare path, not by every command.
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        for attempt in Retrying(retry=retry_if_exception(_is_locked), stop=stop_after_attempt(5),
                                wait=wait_exponential(multiplier=0.05, max=1), reraise=True):
            with attempt:
                self.conn.execute("BEGIN IMMEDIATE")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, taken up front so it never fails half-way on a lock."""
        if self.conn.in_transaction:
            yield self.conn
            return
        self._begin()
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        if self.wakes_daemon:
            wake_daemon(self.path)

    @contextmanager
    def savepoint(self) -> Iterator[sqlite3.Connection]:
        """A nested unit inside the open transaction: on error only its own writes roll back."""
        if not self.conn.in_transaction:
            with self.transaction() as conn:
                yield conn
            return
        self.conn.execute("SAVEPOINT unit")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK TO unit")
            self.conn.execute("RELEASE unit")
            raise
        self.conn.execute("RELEASE unit")

    def _all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Row | None:
        return self.conn.execute(sql, params).fetchone()

    def _transition(
        self, table: str, row_id: int, old: Enum, new: Enum, now: float, **sets: Any
    ) -> None:
        """Move one row from `old` to `new`; refuse anything not in the transition table."""
        if old == new and not sets:
            return
        if old != new and not is_allowed(old, new):
            raise TransitionError(f"{self._row_name(table, row_id)}: {old.value} -> "
                                  f"{new.value} is not allowed")
        assignments = "".join(f", {column} = ?" for column in sets)
        cursor = self.conn.execute(
            f"UPDATE {table} SET status = ?, updated_at = ?{assignments}"
            " WHERE id = ? AND status = ?",
            [new.value, now, *sets.values(), row_id, old.value],
        )
        if cursor.rowcount != 1:
            raise TransitionError(
                f"{table} {row_id}: expected status {old.value!r}, it changed underneath"
            )

    def _row_name(self, table: str, row_id: int) -> str:
        """A row as users know it (`trial s:7`, `trial s:7 stage backtest`), never an id."""
        sql = {"trials": "SELECT study, trial_number, NULL FROM trials WHERE id = ?",
               "stages": "SELECT t.study, t.trial_number, s.stage_name FROM stages s"
                         " JOIN trials t ON t.id = s.trial_id WHERE s.id = ?",
               "deployments": "SELECT t.study, t.trial_number, 'deployment' FROM deployments d"
                              " JOIN trials t ON t.id = d.trial_id WHERE d.id = ?"}.get(table)
        row = self._one(sql, [row_id]) if sql else None
        if row is None:
            return f"{table} {row_id}"
        extra = "" if row[2] is None else (
            " deployment" if table == "deployments" else f" stage {row[2]}")
        return f"trial {row[0]}:{row[1]}{extra}"

    def add_event(
        self,
        kind: str,
        now: float,
        trial_id: int | None = None,
        stage: str | None = None,
        old: str | None = None,
        new: str | None = None,
        message: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> int:
        """Append to the audit trail; events named in `notify.events` also enter the outbox."""
        cursor = self.conn.execute(
            "INSERT INTO events (ts, trial_id, stage, kind, old_status, new_status, message, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [now, trial_id, stage, kind, old, new, message, dumps(data)],
        )
        event_id = int(cursor.lastrowid or 0)
        if kind in self.notify_kinds:
            self.conn.execute(
                "INSERT INTO outbox (event_id, next_attempt_at) VALUES (?, ?)", [event_id, now]
            )
        return event_id

    def integrity_check(self) -> str:
        """`PRAGMA integrity_check`'s verdict ("ok" when healthy)."""
        return str(self._one("PRAGMA integrity_check")[0])  # type: ignore[index]
