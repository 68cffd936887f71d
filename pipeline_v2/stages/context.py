"""What a stage callable receives: the public `StageContext` contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StageContext:
    """Everything a stage needs to know about the trial it validates.

    `results` holds the metrics of the trial's earlier passed stages, by stage name;
    `log` is a structlog logger bound to the trial, stage and attempt. `storage` is the Optuna
    storage URL (read it, never write it) and `config_dir` the config file's folder, against
    which relative paths in `stage_params` resolve.
    """

    study: str
    number: int
    params: dict[str, Any]
    user_attrs: dict[str, Any]
    value: float | None
    model_dir: Path
    run_dir: Path
    stage: str
    stage_params: dict[str, Any]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempt: int = 1
    values: list[float | None] | None = None
    trial_id: int = 0
    storage: str = ""
    config_dir: Path = Path(".")
    log: Any = None

    def path(self, value: str | Path) -> Path:
        """A path from stage params, resolved against the config folder."""
        return (self.config_dir / Path(value).expanduser()).resolve()
