"""Argv templates: each element formatted on its own with the trial's fields; never a shell."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline_v2.models import Trial


def base_fields(study: str, number: int, trial_id: int, value: Any, params: dict[str, Any],
                user_attrs: dict[str, Any]) -> dict[str, Any]:
    """The fields every template may name, known as soon as a trial is discovered."""
    return {
        "study": study,
        "number": number,
        "trial_id": trial_id,
        "value": value,
        "params": params,
        "user_attrs": user_attrs,
        "python": sys.executable,
    }


def template_fields(trial: Trial, run_dir: Path) -> dict[str, Any]:
    """Every field a stage or deploy template may name."""
    values = trial.values or [trial.value]
    value = trial.value if trial.value is not None else values[0]
    fields = base_fields(trial.study, trial.number, trial.optuna_trial_id, value, trial.params,
                         trial.user_attrs)
    return fields | {"model_dir": trial.model_dir, "run_dir": str(run_dir)}


def render_argv(argv: Sequence[str], fields: dict[str, Any]) -> list[str]:
    """Format each element; a missing params/user_attrs key raises KeyError naming it."""
    return [part.format(**fields) for part in argv]
