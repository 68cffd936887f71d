"""`python -m pipeline_v2.paper --model-dir DIR --run-dir DIR [options]`.

Honours the paper-trader contract: heartbeat and metrics.json kept current, state persisted in
run_dir (a restart resumes), SIGTERM flushes and exits 0, exit 0 when the feed ends, exit 3 when
the broker keeps failing (after flattening). Options not given on the command line come from
the `paper` object in the model's model.json, then from the defaults below. The model is
resolved as the builtin stages resolve it: model.json, else `$PIPELINE_TRIAL_PARAMS` (the
trial's params, JSON) with a `strategy` among them or in `$PIPELINE_STAGE_PARAMS`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline_v2.backtest.data import load_bars
from pipeline_v2.backtest.errors import DataError, StrategyError
from pipeline_v2.backtest.model import load_model
from pipeline_v2.backtest.synthetic import regime_bars
from pipeline_v2.paper.trader import EXIT_BROKER_DOWN, Broker, Trader

DEFAULTS: dict[str, Any] = {
    "feed": None, "start": None, "end": None, "speed": 50.0, "synthetic_bars": 2520,
    "seed": 0, "fault_rate": 0.0, "stop_loss": 0.05, "max_position": 1.0,
    "commission": 0.0005, "slippage": 0.0005, "cash": 10_000.0,
}


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m pipeline_v2.paper", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, type=Path,
                        help="the trial's model_dir (model.json: strategy, params, paper)")
    parser.add_argument("--run-dir", required=True, type=Path,
                        help="where state, metrics.json, heartbeat and fills live")
    parser.add_argument("--feed", help="CSV to replay (default: a seeded synthetic live feed)")
    parser.add_argument("--start", help="first date of the CSV feed to replay")
    parser.add_argument("--end", help="end date (exclusive) of the CSV feed")
    parser.add_argument("--speed", type=float, help="bars per second (0: as fast as possible)")
    parser.add_argument("--synthetic-bars", type=int, help="length of the synthetic feed")
    parser.add_argument("--seed", type=int, help="seed of the synthetic feed and broker faults")
    parser.add_argument("--fault-rate", type=float, help="fraction of broker calls that fail")
    parser.add_argument("--stop-loss", type=float, help="stop distance as a fraction of entry")
    parser.add_argument("--max-position", type=float, help="position cap, fraction of equity")
    parser.add_argument("--commission", type=float, help="fraction of notional per fill")
    parser.add_argument("--slippage", type=float, help="fraction of price against each fill")
    parser.add_argument("--cash", type=float, help="starting cash")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Run the trader; the exit code says how it ended."""
    args = parse(argv)
    try:
        # The stages' model resolution: model.json, else the trial's params with `strategy`
        # among them or in the stage params (the deployer passes both in the environment).
        params = json.loads(os.environ.get("PIPELINE_TRIAL_PARAMS") or "{}")
        stage_params = json.loads(os.environ.get("PIPELINE_STAGE_PARAMS") or "{}")
        model = load_model(args.model_dir, params, stage_params.get("strategy"))
    except (DataError, ValueError) as exc:
        print(f"paper: {exc}", file=sys.stderr)
        return 2
    options = dict(DEFAULTS) | (model.get("paper") or {})
    options |= {k: v for k, v in vars(args).items() if v is not None and k in DEFAULTS}
    try:
        if options["feed"]:
            # --feed is relative to the working directory (under the daemon: the config's
            # folder); a feed named in model.json is relative to the model's folder.
            feed = Path(options["feed"]).expanduser()
            base = Path.cwd() if args.feed else args.model_dir
            feed = feed if feed.is_absolute() else (base / feed).resolve()
            bars = load_bars(feed).window(options["start"], options["end"])
        else:
            bars = regime_bars(int(options["synthetic_bars"]), int(options["seed"]))
    except DataError as exc:
        print(f"paper: {exc}", file=sys.stderr)
        return 2
    args.run_dir.mkdir(parents=True, exist_ok=True)
    broker = Broker(float(options["commission"]), float(options["slippage"]),
                    float(options["fault_rate"]), int(options["seed"]))
    try:
        trader = Trader(args.run_dir, bars, model["strategy"], model.get("params", {}), broker,
                        float(options["stop_loss"]), float(options["max_position"]),
                        float(options["cash"]), speed=float(options["speed"]),
                        model_dir=args.model_dir)
    except (DataError, StrategyError) as exc:
        print(f"paper: {exc}", file=sys.stderr)
        return 2

    def stop(signum: int, _frame: object) -> None:
        trader.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _say("paper_started", strategy=model["strategy"], bars=len(bars),
         resume_at=trader.state.cursor)
    try:
        code = trader.run()
    except StrategyError as exc:  # a plug-in broke the contract: a crash the supervisor sees
        print(f"paper: {exc}", file=sys.stderr)
        return 2
    if code == EXIT_BROKER_DOWN:
        print(f"paper: the broker kept failing; position flattened, stopping with exit code "
              f"{code}", file=sys.stderr)
    _say("paper_stopped", code=code, **trader.metrics())
    return code


def _say(event: str, **fields: Any) -> None:
    """One JSON line on stdout, timed: `pipeline logs TRIAL` orders it by its `timestamp`."""
    stamp = datetime.now(UTC).isoformat()
    print(json.dumps({"event": event, **fields, "timestamp": stamp}), flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
