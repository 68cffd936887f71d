"""The builtin stages on the reference engine: `backtest` and `stress`.

Both load the trial's model (`model.json` in its model_dir: strategy, params, optionally data),
falling back to the trial's params with `strategy` taken from them or from the stage params.

Stage params (all optional unless said): `data` (CSV/Parquet path, relative to the config
folder; required unless the model names it), `start` / `end` (window, ISO dates, end exclusive),
`commission`, `slippage`, `periods_per_year`, `strategy` (a builtin name or a plug-in,
"package.module:name", see backtest/plugins.py).
backtest also rejects a strategy that looks ahead (backtest/lookahead.py); `compare_to` (an
earlier stage: adds `degradation` = (its sharpe - ours) / |its sharpe|), `dsr_trials` /
`dsr_sharpe_variance` (override N and the variance of the trials' annualised Sharpe ratios,
which otherwise come from the study's objective values).
backtest also: `folds` (walk-forward; see pipeline_v2.backtest.folds). It keeps its per-bar
out-of-sample returns in `{run_dir}/{stage}.returns.npz` (named by `returns_file` in its
results) for the study's PBO, and its DSR inputs in `dsr_inputs`.
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
    LookAheadError,
    StrategyError,
    deflated_sharpe,
    equity_points,
    load_bars,
)
from pipeline_v2.backtest import (
    backtest as run_backtest,
)
from pipeline_v2.backtest.data import Bars
from pipeline_v2.backtest.dsr import dsr_inputs
from pipeline_v2.backtest.errors import DataError
from pipeline_v2.backtest.folds import parse_folds, walk_forward
from pipeline_v2.backtest.model import MODEL_FILE, load_model
from pipeline_v2.backtest.plugins import Strategy, load_strategy, warmup_bars
from pipeline_v2.backtest.scenarios import METHODS
from pipeline_v2.backtest.series import save_returns
from pipeline_v2.backtest.stress import stress_test
from pipeline_v2.errors import Reject
from pipeline_v2.stages.context import StageContext

_STUDY_CACHE: dict[tuple[str, str], tuple[float, tuple[int, list[float]]]] = {}
STUDY_CACHE_S = 60.0


def _inputs(ctx: StageContext, warm_up: bool = False
            ) -> tuple[Bars, dict[str, Any], float, float, int]:
    p = ctx.stage_params
    model = load_model(ctx.model_dir, ctx.params, p.get("strategy"))
    if p.get("data"):
        data = ctx.path(p["data"])
    elif model.get("data"):
        data = (Path(ctx.model_dir) / model["data"]).resolve()
    else:
        raise DataError(f"stage {ctx.stage}: no data: set params.data in stages.json "
                        f"or \"data\" in {ctx.model_dir}/model.json")
    every = load_bars(data)
    history = warmup_bars(_strategy(ctx, model)) if warm_up else 0
    bars, trade_from = every.window_with_history(p.get("start"), p.get("end"), history)
    return (bars, model, float(p.get("commission", DEFAULT_COMMISSION)),
            float(p.get("slippage", DEFAULT_SLIPPAGE)), trade_from)


def _strategy(ctx: StageContext, model: dict[str, Any]) -> Strategy:
    """The model's strategy, loaded; errors name where the strategy was named."""
    try:
        return load_strategy(model["strategy"], model.get("params", {}), ctx.model_dir)
    except StrategyError as exc:
        raise StrategyError(f"{_named_by(ctx)}: {exc}") from None


def _named_by(ctx: StageContext) -> str:
    """Where the strategy name came from, in load_model's order."""
    artifact = Path(ctx.model_dir) / MODEL_FILE if ctx.model_dir else None
    if artifact is not None and artifact.exists():
        return f"{artifact}: strategy"
    if ctx.params.get("strategy"):
        return f"trial {ctx.study}:{ctx.number}: params.strategy"
    return f"stages.{ctx.stage}.params.strategy"


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
    # Indicators warm up on the bars before `start` when there are any; trades stay inside.
    every, model, commission, slippage, trade_from = _inputs(ctx, warm_up=True)
    strategy = _strategy(ctx, model)  # resolved once: folds run the same object
    try:
        metrics, run = run_backtest(every, strategy, {}, commission, slippage,
                                    p.get("periods_per_year"), trade_from, lookahead=True)
    except LookAheadError as exc:
        raise Reject(str(exc)) from None
    bars = every.slice(trade_from, len(every))
    if "dsr_trials" in p and "dsr_sharpe_variance" in p:
        n_trials, variance = int(p["dsr_trials"]), float(p["dsr_sharpe_variance"])
    else:
        n_trials, values = _study_stats(ctx) if ctx.storage else (1, [])
        variance = float(np.var(values, ddof=1)) if len(values) > 1 else 0.0
    metrics["deflated_sharpe"] = deflated_sharpe(run, max(n_trials, 1),
                                                 variance / metrics["periods_per_year"])
    metrics["dsr_inputs"] = dsr_inputs(run, max(n_trials, 1), variance,
                                       metrics["periods_per_year"])
    if p.get("folds") is not None:
        spec = parse_folds(p["folds"])
        metrics.update(walk_forward(
            bars, spec, lambda window: run_backtest(
                window, strategy, {}, commission, slippage, metrics["periods_per_year"])[1],
            metrics["periods_per_year"]))
    reference = p.get("compare_to")
    if reference:
        if reference not in ctx.results or "sharpe" not in ctx.results[reference]:
            raise DataError(f"compare_to: stage {reference!r} has no sharpe for this trial "
                            f"(earlier passed stages: {', '.join(ctx.results) or 'none'})")
        before = float(ctx.results[reference]["sharpe"])
        metrics["degradation"] = (before - metrics["sharpe"]) / abs(before) if before else 0.0
    curve = {"stage": ctx.stage, "equity": equity_points(run, bars), "strategy": model}
    (ctx.run_dir / f"{ctx.stage}.equity.json").write_text(json.dumps(curve))
    returns_file = save_returns(ctx.run_dir / f"{ctx.stage}.returns.npz", bars.time, run.equity)
    metrics["returns_file"] = str(returns_file.resolve())
    ctx.log.info("backtest_done", strategy=model["strategy"], bars=len(bars),
                 sharpe=round(metrics["sharpe"], 4), trades=metrics["trades"])
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def stress(ctx: StageContext) -> dict[str, Any]:
    """Seeded CGE-style scenarios from the trial's own data."""
    p = ctx.stage_params
    bars, model, commission, slippage, _ = _inputs(ctx)
    methods = tuple(p.get("methods", METHODS))
    seed = int(p.get("seed", 0)) * 1_000_003 + ctx.number
    result = stress_test(bars, _strategy(ctx, model), {}, int(p.get("scenarios", 200)), seed,
                         commission, slippage, methods)
    ctx.log.info("stress_done", scenarios=result["scenarios"],
                 profitable_fraction=result["profitable_fraction"])
    return result
