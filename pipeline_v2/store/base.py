"""Connection, migrations, transactions, status transitions and the event log."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from pipeline_v2 import schema
from pipeline_v2.errors import StoreError, TransitionError
from pipeline_v2.models import is_allowed

SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 30.0


def dumps(value: Any) -> str | None:
    """JSON text for a column (None stays NULL)."""
    return None if value is None else json.dumps(value, default=str, allow_nan=True)


def loads(text: str | None, default: Any = None) -> Any:
    """A JSON column back to Python."""
    return default if text is None else json.loads(text)


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


class BaseStore:
    """One connection to the state DB; open one per process or thread."""

    def __init__(self, path: Path | str, notify_kinds: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.notify_kinds = frozenset(notify_kinds)
        self._check_is_sqlite()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        self.db = Database(conn)
        self.conn = conn
        try:
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{self.path}: cannot use the state DB: {exc}") from None

    def _check_is_sqlite(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb") as fh:
            if fh.read(16) != SQLITE_HEADER:
                raise StoreError(
                    f"{self.path}: not an SQLite database; refusing to touch it "
                    "(point state_db at a new file)"
                )

    def _migrate(self) -> None:
        known = schema.known_migrations()
        applied = [m.name for m in schema.migrations.applied(self.db)]
        self._refuse_newer(applied, known)
        if len(applied) >= len(known):
            return
        # Two processes may open a new DB at once (a CLI beside a starting daemon): the write
        # lock comes first, then the pending list is read again under it.
        with self.transaction():
            applied = [m.name for m in schema.migrations.applied(self.db)]
            self._refuse_newer(applied, known)
            schema.migrations.apply(self.db)

    def _refuse_newer(self, applied: list[str], known: list[str]) -> None:
        newer = [name for name in applied if name not in known]
        if newer:
            raise StoreError(
                f"{self.path}: written by a newer pipeline_v2 (schema {newer[-1]!r}, this "
                f"version knows up to {known[-1]!r}); upgrade pipeline_v2 to use it"
            )

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def _begin(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not _is_locked(exc):
                raise
            self._begin_retrying()

    @retry(retry=retry_if_exception(_is_locked), stop=stop_after_attempt(5),
           wait=wait_exponential(multiplier=0.05, max=1), reraise=True)
    def _begin_retrying(self) -> None:
        # busy_timeout already waits 30 s; this covers the rare SQLITE_BUSY it cannot.
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
            raise TransitionError(f"{table} {row_id}: {old.value} -> {new.value} is not allowed")
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
