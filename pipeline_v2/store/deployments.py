"""Deployments: supervised paper-trading processes and their identity."""

from __future__ import annotations

from typing import Any

from pipeline_v2.store.base import BaseStore, loads


class DeploymentsMixin(BaseStore):
    """Deployment rows."""

    def deployment_rows(self, live_only: bool = False) -> list[dict[str, Any]]:
        """Deployments with their trial's reference, newest first."""
        sql = (
            "SELECT d.*, t.study, t.trial_number FROM deployments d"
            " JOIN trials t ON t.id = d.trial_id"
        )
        if live_only:
            sql += " WHERE d.status NOT IN ('stopped', 'exited', 'fatal')"
        rows = self._all(sql + " ORDER BY d.id DESC")
        return [
            dict(r) | {"crash_times": loads(r["crash_times"], []), "metrics": loads(r["metrics"])}
            for r in rows
        ]
