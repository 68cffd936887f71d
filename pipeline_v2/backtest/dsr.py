"""The Deflated Sharpe Ratio with its inputs laid out, for reports (Bailey & Lopez de Prado 2014).

DSR = Phi((SR - SR0) sqrt(T - 1) / sqrt(1 - skew SR + (kurt - 1) / 4 SR^2)) on per-period
Sharpe ratios, where SR0 = sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e)))
is the best Sharpe a search of N zero-skill trials whose Sharpe ratios vary by V reaches by luck.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline_v2.backtest import metrics
from pipeline_v2.backtest.engine import Run


def dsr_summary(sharpe: float, observations: int, skew: float, kurtosis: float,
                n_trials: int, sharpe_variance: float, ppy: float) -> dict[str, Any]:
    """DSR and every input. `sharpe` is per period; `sharpe_variance` is of the trials'
    annualised Sharpe ratios; `kurtosis` is non-excess."""
    variance = sharpe_variance / ppy
    sr0 = metrics.expected_max_sharpe(n_trials, variance)
    return {
        "n_trials": int(n_trials),
        "sharpe_variance": float(sharpe_variance),
        "skew": float(skew),
        "kurtosis": float(kurtosis),
        "observations": int(observations),
        "periods_per_year": float(ppy),
        "sharpe_per_period": float(sharpe),
        "sr0_per_period": sr0,
        "sr0": sr0 * math.sqrt(ppy),
        "deflated_sharpe": metrics.deflated_sharpe(sharpe, observations, skew, kurtosis,
                                                   n_trials, variance),
    }


def dsr_from_returns(returns: np.ndarray, n_trials: int, sharpe_variance: float,
                     ppy: float) -> dict[str, Any]:
    """`dsr_summary` with the Sharpe ratio and moments measured on these returns."""
    skew, kurt = metrics.moments(returns) if len(returns) else (0.0, 3.0)
    return dsr_summary(metrics.sharpe_ratio(returns), len(returns), skew, kurt, n_trials,
                       sharpe_variance, ppy)


def dsr_inputs(run: Run, n_trials: int, sharpe_variance: float, ppy: float) -> dict[str, Any]:
    """`dsr_from_returns` on a run's equity returns."""
    return dsr_from_returns(run.equity[1:] / run.equity[:-1] - 1.0, n_trials, sharpe_variance,
                            ppy)
