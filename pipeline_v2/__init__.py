"""pipeline_v2: carry completed Optuna trials through backtest, stress and paper trading."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline_v2.errors import Reject

if TYPE_CHECKING:
    from pipeline_v2.stages.context import StageContext

__version__ = "0.1.0"
__all__ = ["Reject", "StageContext", "__version__"]


def __getattr__(name: str) -> Any:
    # StageContext on first use: the CLI's start-up need not import the stage machinery.
    if name == "StageContext":
        from pipeline_v2.stages.context import StageContext

        return StageContext
    raise AttributeError(f"module 'pipeline_v2' has no attribute {name!r}")
