"""The builtin stages on the reference engine: `backtest` and `stress`.

Both load the trial's model (`model.json` in its model_dir: strategy, params, optionally data),
falling back to the trial's params with `strategy` taken from them or from the stage params.

Stage params (all optional unless said): `data` (CSV/Parquet path, relative to the config
folder; required unless the model names it), `start` / `end` (window, ISO dates, end exclusive),
`commission`, `slippage`, `periods_per_year`, `strategy`.
backtest also: `compare_to` (an earlier stage: adds `degradation` = (its sharpe - ours) /
|its sharpe|), `dsr_trials` / `dsr_sharpe_variance` (override N and the variance of the trials'
annualised Sharpe ratios, which otherwise come from the study's objective values).
stress also: `scenarios` (200), `seed` (0), `methods`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_v2.backtest import (
    DEFAULT_COMMISSION,
    DEFAULT_SLIPPAGE,
    deflated_sharpe,
    equity_points,
    load_bars,
)
from pipeline_v2.backtest import (
    backtest as run_backtest,
)
from pipeline_v2.backtest.data import Bars, DataError
from pipeline_v2.backtest.model import load_model
from pipeline_v2.backtest.scenarios import METHODS
from pipeline_v2.backtest.stress import stress_test
from pipeline_v2.stages.context import StageContext

_STUDY_CACHE: dict[tuple[str, str], tuple[float, tuple[int, list[float]]]] = {}
STUDY_CACHE_S = 60.0


def _inputs(ctx: StageContext) -> tuple[Bars, dict[str, Any], float, float]:
    p = ctx.stage_params
    model = load_model(ctx.model_dir, ctx.params, p.get("strategy"))
    if p.get("data"):
        data = ctx.path(p["data"])
    elif model.get("data"):
        data = (Path(ctx.model_dir) / model["data"]).resolve()
    else:
        raise DataError(f"stage {ctx.stage}: no data: set params.data in stages.json "
                        f"or \"data\" in {ctx.model_dir}/model.json")
    bars = load_bars(data).window(p.get("start"), p.get("end"))
    return (bars, model, float(p.get("commission", DEFAULT_COMMISSION)),
            float(p.get("slippage", DEFAULT_SLIPPAGE)))


def _study_stats(ctx: StageContext) -> tuple[int, list[float]]:
    from pipeline_v2.optuna_source import study_values

    key = (ctx.storage, ctx.study)
    cached = _STUDY_CACHE.get(key)
    if cached and time.monotonic() - cached[0] < STUDY_CACHE_S:
        return cached[1]
    stats = study_values(ctx.storage, ctx.study)
    _STUDY_CACHE[key] = (time.monotonic(), stats)
    return stats


def backtest(ctx: StageContext) -> dict[str, Any]:
    """Out-of-sample metrics of the trial's model, with its deflated Sharpe ratio."""
    p = ctx.stage_params
    bars, model, commission, slippage = _inputs(ctx)
    metrics, run = run_backtest(bars, model["strategy"], model.get("params", {}), commission,
                                slippage, p.get("periods_per_year"))
    if "dsr_trials" in p and "dsr_sharpe_variance" in p:
        n_trials, variance = int(p["dsr_trials"]), float(p["dsr_sharpe_variance"])
    else:
        n_trials, values = _study_stats(ctx) if ctx.storage else (1, [])
        variance = float(np.var(values, ddof=1)) if len(values) > 1 else 0.0
    metrics["deflated_sharpe"] = deflated_sharpe(run, max(n_trials, 1),
                                                 variance / metrics["periods_per_year"])
    reference = p.get("compare_to")
    if reference:
        if reference not in ctx.results or "sharpe" not in ctx.results[reference]:
            raise DataError(f"compare_to: stage {reference!r} has no sharpe for this trial "
                            f"(earlier passed stages: {', '.join(ctx.results) or 'none'})")
        before = float(ctx.results[reference]["sharpe"])
        metrics["degradation"] = (before - metrics["sharpe"]) / abs(before) if before else 0.0
    curve = {"stage": ctx.stage, "equity": equity_points(run, bars), "strategy": model}
    (ctx.run_dir / f"{ctx.stage}.equity.json").write_text(json.dumps(curve))
    ctx.log.info("backtest_done", strategy=model["strategy"], bars=len(bars),
                 sharpe=round(metrics["sharpe"], 4), trades=metrics["trades"])
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def stress(ctx: StageContext) -> dict[str, Any]:
    """Seeded CGE-style scenarios from the trial's own data."""
    p = ctx.stage_params
    bars, model, commission, slippage = _inputs(ctx)
    methods = tuple(p.get("methods", METHODS))
    seed = int(p.get("seed", 0)) * 1_000_003 + ctx.number
    result = stress_test(bars, model["strategy"], model.get("params", {}),
                         int(p.get("scenarios", 200)), seed, commission, slippage, methods)
    ctx.log.info("stress_done", scenarios=result["scenarios"],
                 profitable_fraction=result["profitable_fraction"])
    return result
