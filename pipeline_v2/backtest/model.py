"""The model artifact a trial leaves in its model_dir: `model.json` naming strategy and params."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline_v2.backtest.errors import DataError

MODEL_FILE = "model.json"


def save_model(model_dir: Path, strategy: str, params: dict[str, Any], **extra: Any) -> Path:
    """Write model.json (strategy, params and anything else worth keeping, e.g. data)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / MODEL_FILE
    path.write_text(json.dumps({"strategy": strategy, "params": params, **extra}, indent=2))
    return path


def load_model(model_dir: Path | str | None, fallback: dict[str, Any],
               default_strategy: str | None = None) -> dict[str, Any]:
    """model.json from model_dir, else the trial's params (with `strategy` among them)."""
    if model_dir:
        path = Path(model_dir) / MODEL_FILE
        if path.exists():
            try:
                model = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: invalid JSON: {exc}") from None
            if not isinstance(model, dict) or "strategy" not in model:
                raise DataError(f'{path}: expected an object with "strategy" and "params"')
            return model
    params = dict(fallback)
    strategy = params.pop("strategy", None) or default_strategy
    if not strategy:
        raise DataError(
            f"no {MODEL_FILE} in {model_dir or '(no model_dir)'} and the trial's params name "
            'no "strategy"; set stage params.strategy or save a model artifact'
        )
    return {"strategy": strategy, "params": params}
