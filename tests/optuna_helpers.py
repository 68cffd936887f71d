"""Real Optuna studies for tests: one factory per storage kind."""

from __future__ import annotations

from pathlib import Path

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)

STORAGE_KINDS = ["sqlite", "journal"]


def storage_url(kind: str, folder: Path) -> str:
    """A storage URL/path of this kind in `folder`, as stages.json would name it."""
    return f"sqlite:///{folder / 'optuna.db'}" if kind == "sqlite" else str(folder / "journal.log")


def open_storage(url: str) -> optuna.storages.BaseStorage | str:
    """What optuna.create_study takes for this URL."""
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
