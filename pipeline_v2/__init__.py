"""pipeline_v2: carry completed Optuna trials through backtest, stress and paper trading."""

from pipeline_v2.errors import Reject
from pipeline_v2.stages.context import StageContext

__version__ = "0.1.0"
__all__ = ["Reject", "StageContext", "__version__"]
