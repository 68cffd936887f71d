"""Argv templates: each element formatted on its own with the trial's fields; never a shell."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline_v2.models import Trial


def safe_name(text: str) -> str:
    """A study name made safe as one path component."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "_"


def trial_dir(logs_dir: Path, trial: Trial, kind: str = "trials") -> Path:
    """`logs/<kind>/<study>/<number>/`: one folder per trial, whatever the study is called."""
    study = safe_name(trial.study) + (f"@{trial.generation}" if trial.generation else "")
    return logs_dir / kind / study / str(trial.number)


def template_fields(trial: Trial, run_dir: Path) -> dict[str, Any]:
    """Every field a template may name."""
    values = trial.values or [trial.value]
    return {
        "study": trial.study,
        "number": trial.number,
        "trial_id": trial.optuna_trial_id,
        "value": trial.value if trial.value is not None else values[0],
        "params": trial.params,
        "user_attrs": trial.user_attrs,
        "model_dir": trial.model_dir,
        "run_dir": str(run_dir),
        "python": sys.executable,
    }


def render_argv(argv: Sequence[str], fields: dict[str, Any]) -> list[str]:
    """Format each element; a missing params/user_attrs key raises KeyError naming it."""
    return [part.format(**fields) for part in argv]
