"""Performance metrics with fixed, documented conventions. Pure numpy; no I/O.

- Returns are close-to-close returns of the equity curve (n bars -> n - 1 returns).
- sharpe = mean / std (ddof=1) x sqrt(periods_per_year), risk-free rate 0.
- sortino = mean / downside deviation x sqrt(periods_per_year); downside deviation is
  sqrt(mean(min(r, 0)^2)) over all returns (target 0).
- periods_per_year from the bar spacing: daily bars are 252 a year when the data has no
  weekend days, else 365; intraday bars scale that by bars per day (x24 for hourly).
- max_drawdown is a positive fraction: max over time of 1 - equity / running peak.
- cagr = (final / initial) ^ (periods_per_year / (n - 1)) - 1; calmar = cagr / max_drawdown.
- win_rate, profit_factor (gross gains / gross losses) and expectancy (mean return) are per
  closed trade; exposure is the mean absolute position held per bar (the fraction of bars
  with a position, for +1/0/-1 strategies).
- deflated_sharpe follows Bailey & Lopez de Prado (2014) on per-period Sharpe ratios with
  non-excess kurtosis.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from pipeline_v2.backtest.engine import Run

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()
SECONDS_PER_DAY = 86_400


def periods_per_year(times: np.ndarray) -> float:
    """Bars per year inferred from the median spacing and whether weekends appear."""
    seconds = np.diff(times.astype("datetime64[s]").astype(np.int64))
    spacing = float(np.median(seconds)) if len(seconds) else SECONDS_PER_DAY
    days = times.astype("datetime64[D]")
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday -> 3
    days_per_year = 365.0 if (weekday >= 5).any() else 252.0
    return days_per_year * SECONDS_PER_DAY / spacing


def sharpe_ratio(returns: np.ndarray, ppy: float = 1.0) -> float:
    """mean / std(ddof=1) x sqrt(ppy); 0 when undefined."""
    if len(returns) < 2:
        return 0.0
    std = float(np.std(returns, ddof=1))
    return 0.0 if std == 0.0 else float(np.mean(returns)) / std * math.sqrt(ppy)


def sortino_ratio(returns: np.ndarray, ppy: float) -> float:
    """mean / downside deviation x sqrt(ppy); 0 when there is no downside."""
    if len(returns) < 2:
        return 0.0
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
    return 0.0 if downside == 0.0 else float(np.mean(returns)) / downside * math.sqrt(ppy)


def max_drawdown(equity: np.ndarray) -> float:
    """Largest peak-to-trough fall as a positive fraction."""
    peaks = np.maximum.accumulate(equity)
    return float(np.max(1.0 - equity / peaks))


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """SR0: the Sharpe ratio the best of n independent trials reaches by luck alone."""
    if n_trials < 2 or variance <= 0:
        return 0.0
    z1 = _NORMAL.inv_cdf(1.0 - 1.0 / n_trials)
    z2 = _NORMAL.inv_cdf(1.0 - 1.0 / (n_trials * math.e))
    return math.sqrt(variance) * ((1.0 - EULER_GAMMA) * z1 + EULER_GAMMA * z2)


def deflated_sharpe(sharpe: float, n_obs: int, skew: float, kurtosis: float, n_trials: int,
                    variance: float) -> float:
    """Probability that the true (per-period) Sharpe exceeds SR0 given N trials.

    `sharpe` and `variance` (of the trials' Sharpe ratios) are per period, not annualised;
    `kurtosis` is non-excess (3 for a normal distribution).
    """
    if n_obs < 2:
        return 0.0
    sr0 = expected_max_sharpe(n_trials, variance)
    denominator = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if denominator <= 0:
        return 0.0
    return _NORMAL.cdf((sharpe - sr0) * math.sqrt(n_obs - 1) / math.sqrt(denominator))


def moments(returns: np.ndarray) -> tuple[float, float]:
    """Skewness and non-excess kurtosis (population moments)."""
    centred = returns - returns.mean()
    var = float(np.mean(centred**2))
    if var == 0.0:
        return 0.0, 3.0
    return float(np.mean(centred**3)) / var**1.5, float(np.mean(centred**4)) / var**2


def compute(run: Run, ppy: float) -> dict[str, float | int]:
    """Every metric for one run; the names are what gates and `--json` use."""
    equity = run.equity
    returns = equity[1:] / equity[:-1] - 1.0
    total = float(equity[-1] / equity[0] - 1.0)
    years = (len(equity) - 1) / ppy
    growth = equity[-1] / equity[0]
    cagr = float(growth ** (1.0 / years) - 1.0) if years > 0 and growth > 0 else -1.0
    drawdown = max_drawdown(equity)
    trades = run.trade_returns
    gains, losses = trades[trades > 0].sum(), -trades[trades < 0].sum()
    return {
        "total_return": total,
        "cagr": cagr,
        "sharpe": sharpe_ratio(returns, ppy),
        "sortino": sortino_ratio(returns, ppy),
        "calmar": cagr / drawdown if drawdown > 0 else 0.0,
        "max_drawdown": drawdown,
        "win_rate": float((trades > 0).mean()) if len(trades) else 0.0,
        "profit_factor": float(gains / losses) if losses > 0 else (math.inf if gains > 0 else 0.0),
        "expectancy": float(trades.mean()) if len(trades) else 0.0,
        "trades": int(len(trades)),
        "exposure": float(np.abs(run.held).mean()),
        "final_equity": float(equity[-1]),
        "bars": int(len(equity)),
        "periods_per_year": float(ppy),
    }
