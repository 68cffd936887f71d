"""`pipeline report TRIAL`: one trial's numbers at every stage that measured them, side by side,
with degradation, consistency, the DSR and its inputs, warnings and a recommendation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_v2.backtest import metrics as bt_metrics
from pipeline_v2.config import Config
from pipeline_v2.models import Deployment, DeploymentStatus, Trial
from pipeline_v2.paper.trader import EQUITY_FILE
from pipeline_v2.paths import trial_dir
from pipeline_v2.reports import rules
from pipeline_v2.reports.study import StudyCache
from pipeline_v2.store import Store

METRICS = ("total_return", "cagr", "sharpe", "sortino", "calmar", "max_drawdown", "win_rate",
           "profit_factor", "expectancy", "trades", "exposure")
CONSISTENCY_KEEP = 0.5
CONSISTENCY_DEFINITION = (
    "share of out-of-sample measurements (walk-forward folds, replay stages, the stress "
    f"median, paper trading) whose Sharpe ratio keeps at least {CONSISTENCY_KEEP:.0%} of the "
    "backtest's (and is positive); 1 = every measurement confirms the backtest, 0 = none does "
    "or the backtest's Sharpe is not positive")
DEGRADATION_DEFINITION = "(Sharpe before - Sharpe after) / |Sharpe before|, stage to next stage"
LIVE = (DeploymentStatus.STARTING, DeploymentStatus.RUNNING)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _optuna_column(trial: Trial) -> dict[str, Any]:
    """The in-sample numbers: the objective, and user_attrs named like a metric."""
    found: dict[str, Any] = {"objective": trial.value}
    for name in METRICS:
        for key in (f"in_sample_{name}", name):
            if _finite(trial.user_attrs.get(key)) is not None:
                found[name] = trial.user_attrs[key]
                break
    return found


def _stress_column(results: dict[str, Any]) -> dict[str, Any]:
    return {
        "sharpe": {"p5": results.get("sharpe_p5"), "median": results.get("median_sharpe"),
                   "p95": results.get("sharpe_p95")},
        "total_return": results.get("median_return"),
        "max_drawdown": results.get("worst_drawdown"),
        "scenarios": results.get("scenarios"),
        "profitable_fraction": results.get("profitable_fraction"),
        "catastrophic": results.get("catastrophic"),
    }


def read_equity_log(run_dir: Path) -> list[list[Any]]:
    """A paper trader's [[time, equity], ...], last value per time (restarts may repeat)."""
    path = run_dir / EQUITY_FILE
    if not path.exists():
        return []
    points: dict[str, float] = {}
    for line in path.read_text().splitlines():
        try:
            when, equity = json.loads(line)
        except (ValueError, TypeError):
            continue  # a line cut short by a crash
        points[str(when)] = float(equity)
    return [[t, e] for t, e in sorted(points.items())]


def _paper_column(dep: Deployment | None, results: dict[str, Any], ppy: float
                  ) -> tuple[dict[str, Any], list[list[Any]]]:
    """metrics.json's numbers, completed from the equity log where the contract has none."""
    reported = (dep.metrics if dep and dep.metrics else None) or results or {}
    curve = read_equity_log(Path(dep.run_dir)) if dep else []
    column = {k: reported.get(k) for k in METRICS if k in reported}
    if len(curve) > 2:
        equity = np.array([e for _, e in curve])
        returns = equity[1:] / equity[:-1] - 1.0
        years = (len(equity) - 1) / ppy
        cagr = float((equity[-1] / equity[0]) ** (1 / years) - 1) if equity[-1] > 0 else -1.0
        drawdown = bt_metrics.max_drawdown(equity)
        column.setdefault("sortino", bt_metrics.sortino_ratio(returns, ppy))
        column.setdefault("cagr", cagr)
        column.setdefault("calmar", cagr / drawdown if drawdown > 0 else 0.0)
    return column, curve


def _degradation(columns: list[dict[str, Any]]) -> dict[str, float]:
    """Sharpe lost from each measured stage to the next (stress: its median)."""
    chain = []
    for col in columns:
        sharpe = col["metrics"].get("sharpe")
        value = _finite(sharpe["median"] if isinstance(sharpe, dict) else sharpe)
        if value is not None:
            chain.append((col["name"], value))
    pairs = zip(chain, chain[1:], strict=False)
    return {f"{a} -> {b}": (x - y) / abs(x) for (a, x), (b, y) in pairs if x != 0}


def _consistency(backtest: dict[str, Any] | None, columns: list[dict[str, Any]]
                 ) -> dict[str, Any]:
    base = _finite((backtest or {}).get("sharpe"))
    measured: dict[str, float] = {}
    for fold in (backtest or {}).get("folds") or []:
        measured[f"fold {fold['fold']}"] = fold["sharpe"]
    for col in columns:
        if col["kind"] in ("replay", "stress", "paper"):
            sharpe = col["metrics"].get("sharpe")
            value = _finite(sharpe["median"] if isinstance(sharpe, dict) else sharpe)
            if value is not None:
                measured[col["name"]] = value
    if base is None or not measured:
        score = None
    elif base <= 0:
        score = 0.0
    else:
        score = sum(v > 0 and v >= CONSISTENCY_KEEP * base for v in measured.values())
        score /= len(measured)
    return {"score": score, "definition": CONSISTENCY_DEFINITION, "backtest_sharpe": base,
            "measurements": measured}


def _stale_seconds(dep: Deployment | None, config: Config, now: float) -> float | None:
    found = config.deploy_stage
    if dep is None or found is None or dep.status not in LIVE:
        return None
    updated = _finite((dep.metrics or {}).get("updated_at"))
    limit = found[1].heartbeat_timeout
    age = None if updated is None else now - updated
    return age if age is not None and age > limit else None


def trial_report(store: Store, config: Config, ref: str, now: float | None = None,
                 studies: StudyCache | None = None) -> dict[str, Any]:
    """Everything `pipeline report TRIAL` shows, as plain data."""
    now = time.time() if now is None else now
    trial = store.find_trial(ref)
    deploy = config.deploy_stage
    deploy_name = deploy[0] if deploy else None
    dep = store.latest_deployment(trial.id)
    run_dir = trial_dir(config.logs_path, trial)
    columns: list[dict[str, Any]] = [{"name": "optuna", "kind": "in_sample",
                                      "metrics": _optuna_column(trial)}]
    backtest: dict[str, Any] | None = None
    equity: dict[str, list[list[Any]]] = {}
    stress_hist: dict[str, Any] | None = None
    for stage in store.stages_of(trial.id):
        results = stage.results or {}
        base = {"name": stage.name, "status": stage.status.value}
        if stage.name == deploy_name:
            ppy = float((backtest or {}).get("periods_per_year") or 252.0)
            column, curve = _paper_column(dep, results, ppy)
            if column or dep:
                columns.append(base | {"kind": "paper", "metrics": column,
                                       "restarts": dep.restarts if dep else 0})
                equity["paper"] = curve
        elif "profitable_fraction" in results:
            columns.append(base | {"kind": "stress", "metrics": _stress_column(results)})
            stress_hist = stress_hist or results.get("sharpe_histogram")
        elif "sharpe" in results:
            kind = "backtest" if backtest is None else "replay"
            backtest = backtest or results
            columns.append(base | {"kind": kind,
                                   "metrics": {k: results.get(k) for k in METRICS}})
            curve_file = run_dir / f"{stage.name}.equity.json"
            if kind == "backtest" and curve_file.exists():
                equity["backtest"] = json.loads(curve_file.read_text()).get("equity", [])
    degradation = _degradation(columns)  # stages without a Sharpe ratio drop out
    consistency = _consistency(backtest, columns)
    study = (studies or StudyCache(min_interval=0.0)).get(store, trial.study)
    dsr = dict((backtest or {}).get("dsr_inputs") or {})
    if backtest and "deflated_sharpe" in backtest:
        dsr.setdefault("deflated_sharpe", backtest["deflated_sharpe"])
    stress = next((c["metrics"] for c in columns if c["kind"] == "stress"), {})
    facts = rules.Facts(
        status=trial.status.value, has_backtest=backtest is not None,
        trades=(backtest or {}).get("trades"),
        dsr=_finite(dsr.get("deflated_sharpe")), degradation=degradation,
        consistency=consistency["score"], catastrophic=stress.get("catastrophic"),
        paper_restarts=dep.restarts if dep else 0, stale_seconds=_stale_seconds(dep, config, now),
        model_missing=bool(trial.model_dir) and not Path(trial.model_dir).exists(),
        pbo=_finite(study.get("pbo")),
        worst_fold_sharpe=_finite((backtest or {}).get("worst_fold_sharpe")),
    )
    fold_keys = ("fold_mode", "fold_count", "fold_test_bars", "worst_fold_sharpe",
                 "fold_sharpe_mean", "fold_sharpe_std", "worst_fold_return", "pooled")
    return {
        "trial": trial.ref, "study": trial.study, "number": trial.number,
        "status": trial.status.value, "reason": trial.reason, "params": trial.params,
        "value": trial.value, "model_dir": trial.model_dir, "metrics": list(METRICS),
        "columns": columns,
        "degradation": degradation, "degradation_definition": DEGRADATION_DEFINITION,
        "consistency": consistency,
        "dsr": dsr or None,
        "folds": (backtest or {}).get("folds") or [],
        "fold_summary": {k: backtest[k] for k in fold_keys if backtest and k in backtest},
        "stress_histogram": stress_hist,
        "equity": equity,
        "study_pbo": study,
        "warnings": rules.warnings_of(facts),
        "recommendation": rules.evaluate(facts),
    }
