"""Typed exceptions. Each docstring is the meaning; `cli.py` maps them to exit codes."""

from __future__ import annotations


class PipelineError(Exception):
    """An operational error the user can act on (exit 1)."""


class ConfigError(PipelineError):
    """The config file is missing or invalid (exit 2)."""


class UsageError(PipelineError):
    """A command was called with arguments that cannot work (exit 2)."""


class StoreError(PipelineError):
    """The state DB cannot be used: not SQLite, a newer schema, or corrupt."""


class TransitionError(PipelineError):
    """A status change that the transition table does not allow, or a lost race."""


class NotFoundError(PipelineError):
    """A trial, stage or deployment named by the user does not exist."""


class StorageError(PipelineError):
    """The Optuna storage is unreachable, missing, or of an unknown schema."""


class StorageUnavailable(StorageError):
    """The Optuna storage is missing or busy for now: skip this poll, try the next one."""


class LockedError(PipelineError):
    """Another daemon already holds the state DB's lock."""


class Reject(Exception):
    """Raised by a stage to reject the trial: final, never retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
