"""What a stage callable receives: the public `StageContext` contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_v2.models import Trial


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

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if name == "run_dir" and not object.__getattribute__(self, "__dict__").get("_made"):
            # Made on first use: an attempt that never looks at its folder creates none.
            value.mkdir(parents=True, exist_ok=True)
            object.__setattr__(self, "_made", True)
        return value

    def path(self, value: str | Path) -> Path:
        """A path from stage params, resolved against the config folder."""
        return (self.config_dir / Path(value).expanduser()).resolve()

    @classmethod
    def from_fields(cls, fields: dict[str, Any], log: Any = None) -> StageContext:
        """Rebuild a context from `build_stage_context`'s JSON-able dict."""
        values = dict(fields)
        for key in ("model_dir", "run_dir"):
            values[key] = Path(values[key])
        values["config_dir"] = Path(values.get("config_dir", "."))
        return cls(**values, log=log)


def build_stage_context(trial: Trial, *, stage: str, stage_params: dict[str, Any],
                        run_dir: Path, results: dict[str, dict[str, Any]], attempt: int,
                        storage: str, config_dir: str | Path) -> dict[str, Any]:
    """The fields of a `StageContext` for one attempt, as plain JSON-able values."""
    return {
        "study": trial.study, "number": trial.number, "params": trial.params,
        "user_attrs": trial.user_attrs, "value": trial.value, "values": trial.values,
        "trial_id": trial.optuna_trial_id, "model_dir": trial.model_dir,
        "run_dir": str(run_dir), "stage": stage, "stage_params": stage_params,
        "results": results, "attempt": attempt, "storage": storage,
        "config_dir": str(config_dir),
    }
