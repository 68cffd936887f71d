"""The RL example: an Optuna study trains a small numpy policy per trial, then the pipeline
backtests it out of sample, stress-tests it, runs a command-stage baseline, and paper-trades it.

    python examples/rl_policy/train.py --dir example        (what `make example` runs)

Each trial samples the policy's shape (lags, hidden units) and its training's hyper-parameters
(ES noise `sigma`, learning rate), trains the weights with a simple evolution strategy on the
in-sample window (fitness: the Sharpe ratio the reference engine gives the policy's positions,
costs included), saves `weights.npy` and a `model.json` naming the plug-in
(`rl_policy.policy:Policy`) to the trial's model_dir, and reports the in-sample Sharpe. The
daemon then takes every trial through the stages in `stages.json` — the plug-in is imported by
the stage workers and by the paper traders, so `examples/` goes on their PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent
sys.path.insert(0, str(EXAMPLES))

from pipeline_v2.backtest.data import save_csv  # noqa: E402
from pipeline_v2.backtest.engine import simulate  # noqa: E402
from pipeline_v2.backtest.metrics import sharpe_ratio  # noqa: E402
from pipeline_v2.backtest.model import save_model  # noqa: E402
from pipeline_v2.backtest.plugins import view_of  # noqa: E402
from pipeline_v2.backtest.synthetic import regime_bars  # noqa: E402
from rl_policy.policy import WEIGHTS_FILE, Policy, n_weights  # noqa: E402

PLUGIN = "rl_policy.policy:Policy"
STUDY = "rl_policy"
IN_SAMPLE = 0.6
COMMISSION = SLIPPAGE = 0.0005
MARKER = ".pipeline-example"


def fitness(policy: Policy, bars: Any) -> float:
    """Annualised Sharpe of the policy's positions through the reference engine, costs in."""
    run = simulate(bars, policy.positions(view_of(bars)), COMMISSION, SLIPPAGE)
    return sharpe_ratio(run.equity[1:] / run.equity[:-1] - 1.0, 252.0)


def train(bars: Any, params: dict[str, Any], sigma: float, lr: float, iterations: int,
          population: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """OpenAI-style evolution strategy with antithetic noise and rank-shaped fitness."""
    theta = rng.normal(0.0, 0.1, n_weights(int(params["lags"]), int(params["hidden"])))
    half = max(1, population // 2)
    for _ in range(iterations):
        noise = rng.normal(0.0, 1.0, (half, len(theta)))
        noise = np.concatenate((noise, -noise))
        scores = np.array([fitness(Policy(params, None, theta + sigma * e), bars) for e in noise])
        ranks = scores.argsort().argsort() / (len(scores) - 1) - 0.5
        theta = theta + lr / (len(noise) * sigma) * noise.T @ ranks
    return theta, fitness(Policy(params, None, theta), bars)


def build(root: Path, trials: int, bars_n: int, iterations: int, population: int,
          scenarios: int, paper_speed: float, seed: int = 7) -> Path:
    """Data, the trained study with one model per trial, and stages.json; returns its path."""
    import optuna

    root = root.resolve()
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise SystemExit(f"--dir: {root} exists and is not an example workspace; choose another")
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    (root / MARKER).write_text("made by examples/rl_policy/train.py; rebuilt on every run\n")
    bars = regime_bars(bars_n, seed)
    data = root / "data" / "market.csv"
    save_csv(bars, data)
    cut = int(len(bars) * IN_SAMPLE)
    split = str(bars.time[cut])[:10]
    in_sample = bars.slice(0, cut)

    def objective(trial: optuna.Trial) -> float:
        params = {"lags": trial.suggest_int("lags", 2, 8),
                  "hidden": trial.suggest_categorical("hidden", [0, 4]),
                  "vol_window": 20, "step": 0.25}
        sigma = trial.suggest_float("sigma", 0.02, 0.3, log=True)
        lr = trial.suggest_float("lr", 0.01, 0.3, log=True)
        weights, score = train(in_sample, params, sigma, lr, iterations, population,
                               np.random.default_rng(seed * 1000 + trial.number))
        model_dir = root / "models" / f"trial_{trial.number}"
        save_model(model_dir, PLUGIN, params, data="../../data/market.csv",
                   paper={"feed": "../../data/market.csv", "start": split,
                          "speed": paper_speed, "seed": trial.number, "stop_loss": 0.1})
        np.save(model_dir / WEIGHTS_FILE, weights)
        trial.set_user_attr("model_dir", str(model_dir))
        return score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{root / 'optuna.db'}", study_name=STUDY,
                                direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    config = root / "stages.json"
    config.write_text(json.dumps(stages_config(data, split, scenarios), indent=2) + "\n")
    return config


def stages_config(data: Path, split: str, scenarios: int) -> dict[str, Any]:
    """Builtin backtest and stress on the plug-in, a command-stage baseline, paper trading."""
    window = {"data": "data/market.csv", "start": split}
    baseline = EXAMPLES / "command_stage" / "sma_cross.sh"
    return {
        "optuna": {"storage": "sqlite:///optuna.db", "studies": [STUDY],
                   "model_dir": "{user_attrs[model_dir]}"},
        "daemon": {"check_interval": 1, "health_check_interval": 5, "workers": 2},
        "retry": {"delays": [1, 2]},
        "stages": {
            "backtest": {"run": "pipeline_v2.stages.builtin:backtest", "max_attempts": 2,
                         "timeout_seconds": 60, "params": window,
                         "gates": {"exposure": "> 0", "max_drawdown": "<= 0.5"}},
            "cge_stress": {"run": "pipeline_v2.stages.builtin:stress", "max_attempts": 2,
                           "timeout_seconds": 60, "params": {**window, "scenarios": scenarios},
                           "gates": {"catastrophic": "== 0"}},
            "baseline": {"command": ["sh", str(baseline), str(data), split, "10", "40"],
                         "max_attempts": 1, "timeout_seconds": 30, "gates": {"bars": ">= 50"}},
            "deploy": {"max_deployments": 2, "rank_by": "backtest.sharpe",
                       "stop_grace_seconds": 5, "heartbeat_timeout": 30, "evaluate_after": "1h",
                       "restart": {"backoff": [1, 5], "max_crashes": 3, "window_seconds": 60},
                       "gates": {"max_drawdown": "<= 0.5"}},
        },
    }


def run_pipeline(config: Path, timeout: float) -> int:
    """The daemon until idle, with examples/ importable by its workers and traders."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(EXAMPLES), env.get("PYTHONPATH")) if p)
    pipeline = [sys.executable, "-m", "pipeline_v2"]
    daemon = subprocess.run([*pipeline, "run-daemon", "--until-idle", "--timeout", str(timeout),
                             "--config", str(config)], cwd=config.parent, env=env,
                            stdout=subprocess.DEVNULL)
    subprocess.run([*pipeline, "report", "--config", str(config)], cwd=config.parent, env=env)
    return daemon.returncode


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("example"), help="workspace folder")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--bars", type=int, default=1200, help="synthetic daily bars")
    parser.add_argument("--iterations", type=int, default=15, help="ES steps per trial")
    parser.add_argument("--population", type=int, default=16, help="ES samples per step")
    parser.add_argument("--scenarios", type=int, default=60, help="stress scenarios")
    parser.add_argument("--paper-speed", type=float, default=250.0, help="paper bars per second")
    parser.add_argument("--timeout", type=float, default=100.0, help="daemon time limit (s)")
    parser.add_argument("--no-run", action="store_true", help="build the workspace only")
    args = parser.parse_args(argv)
    config = build(args.dir, args.trials, args.bars, args.iterations, args.population,
                   args.scenarios, args.paper_speed)
    print(f"trained {args.trials} policies; workspace {config.parent}", flush=True)
    return 0 if args.no_run else run_pipeline(config, args.timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
