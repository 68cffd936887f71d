"""The only code that touches SQLite: one state DB, migrated, with enforced transitions.

Every state change is one short `BEGIN IMMEDIATE` transaction; a claim is a conditional UPDATE
whose rowcount is checked; a status change not in `models.TRANSITIONS` is refused.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pipeline_v2.errors import ConfigError
from pipeline_v2.store.attempts import AttemptsMixin
from pipeline_v2.store.deployments import DeploymentsMixin
from pipeline_v2.store.ops import OpsMixin
from pipeline_v2.store.ranking import RankingMixin
from pipeline_v2.store.reports import ReportsMixin
from pipeline_v2.store.stages import DueAttempt, StagesMixin

if TYPE_CHECKING:
    from pipeline_v2.config import Config


class Store(AttemptsMixin, DeploymentsMixin, StagesMixin, OpsMixin, ReportsMixin,
            RankingMixin):
    """The state DB. Open one per process (or thread)."""


def open_store(config: Config, check: Literal["quick", "light"] = "quick") -> Store:
    """The state DB named by the config, checked (see `BaseStore`) and migrated to this
    version's schema; never the Optuna storage."""
    url = config.storage_url
    db = config.state_db_path
    optuna_file = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else (
        Path(url) if "://" not in url else None)
    if optuna_file is not None and optuna_file.resolve() == db.resolve():
        raise ConfigError(f"{config.source}: state_db: {str(db)!r} is the Optuna storage "
                          "(optuna.storage); the state DB needs a file of its own")
    notify = config.notify
    kinds = notify.events if (notify.webhook or notify.command) else ()
    return Store(db, notify_kinds=kinds, check=check)


def corrupt_message(config: Config) -> str:
    """`<state_db>: the state DB is corrupt (PRAGMA quick_check: ...)`, read without writing."""
    db = config.state_db_path
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            detail = "; ".join(str(r[0]) for r in conn.execute("PRAGMA quick_check(5)"))
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        detail = str(exc)
    detail = " ".join(detail.split())  # quick_check's verdicts span lines; the message is one
    return f"{db}: the state DB is corrupt (PRAGMA quick_check: {detail})"


__all__ = ["DueAttempt", "Store", "corrupt_message", "open_store"]
