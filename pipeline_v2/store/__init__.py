"""The only code that touches SQLite: one state DB, migrated, with enforced transitions.

Every state change is one short `BEGIN IMMEDIATE` transaction; a claim is a conditional UPDATE
whose rowcount is checked; a status change not in `models.TRANSITIONS` is refused.
"""

from __future__ import annotations

from pipeline_v2.store.deployments import DeploymentsMixin
from pipeline_v2.store.ops import OpsMixin
from pipeline_v2.store.trials import DueAttempt


class Store(DeploymentsMixin, OpsMixin):
    """The state DB. Open one per process (or thread)."""


__all__ = ["DueAttempt", "Store"]
