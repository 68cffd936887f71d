"""Real Optuna studies for tests: one factory per storage kind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The contract suite runs against each; the server kinds need a server (tests/servers.py).
STORAGE_KINDS = ["sqlite", "journal", "postgresql", "mysql"]
FILE_KINDS = ["sqlite", "journal"]


@dataclass(frozen=True)
class Storage:
    """One storage under test: Optuna workers write through `url`, discovery reads `reader`."""

    kind: str
    url: str
    reader: str
    missing: str  # a storage of this kind that does not exist


def storage_url(kind: str, folder: Path) -> str:
    """A file storage URL/path of this kind in `folder`, as stages.json would name it."""
    return f"sqlite:///{folder / 'optuna.db'}" if kind == "sqlite" else str(folder / "journal.log")


def file_storage(kind: str, folder: Path) -> Storage:
    """A SQLite or journal storage in `folder` (written and read through the same path)."""
    url = storage_url(kind, folder)
    return Storage(kind, url, url, url)


_rdb: dict[str, optuna.storages.RDBStorage] = {}


def open_storage(url: str) -> optuna.storages.BaseStorage | str:
    """What optuna.create_study takes for this URL (one engine per server URL per process)."""
    if url.startswith(("postgresql", "mysql")):
        if url not in _rdb:
            _rdb[url] = optuna.storages.RDBStorage(url, skip_table_creation=True)
        return _rdb[url]
    if "://" in url:
        return url
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(url))


def make_study(url: str, name: str, **kwargs) -> optuna.Study:
    """Create (or load) a study in the storage."""
    return optuna.create_study(
        storage=open_storage(url), study_name=name, load_if_exists=True, **kwargs
    )


def complete(study: optuna.Study, n: int, value: float = 1.0) -> None:
    """Add n COMPLETE trials with an int param."""
    for _ in range(n):
        trial = study.ask()
        trial.suggest_int("x", 0, 100)
        study.tell(trial, value)
