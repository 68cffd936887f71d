"""Engine throughput on 1,000,000 bars beside backtesting.py and backtrader (same data, same
SMA-cross strategy, same run), and 200 stress scenarios on about 2,000 bars."""

from __future__ import annotations

import statistics
import time
import warnings

import numpy as np

from bench.common import QUICK, case, repeats
from pipeline_v2.backtest import backtest
from pipeline_v2.backtest.stress import stress_test
from pipeline_v2.backtest.synthetic import regime_bars

N_BARS = 100_000 if QUICK else 1_000_000
PEER_BARS = 10_000 if QUICK else 100_000
FAST, SLOW = 10, 30


def ours(bars, repeat: int = 5) -> tuple[float, dict]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        metrics, _ = backtest(bars, "sma_cross", {"fast": FAST, "slow": SLOW}, 0.0, 0.0)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), metrics


def frame(bars):
    import pandas as pd

    index = pd.DatetimeIndex(bars.time.astype("datetime64[ns]"))
    return pd.DataFrame({"Open": bars.open, "High": bars.high, "Low": bars.low,
                         "Close": bars.close, "Volume": bars.volume}, index=index)


def backtesting_py(bars) -> tuple[float, int]:
    from backtesting import Strategy
    from backtesting.lib import FractionalBacktest, crossover
    from backtesting.test import SMA

    class SmaCross(Strategy):
        def init(self) -> None:
            self.fast = self.I(SMA, self.data.Close, FAST)
            self.slow = self.I(SMA, self.data.Close, SLOW)

        def next(self) -> None:
            if crossover(self.fast, self.slow):
                self.buy(size=0.99999999)
            elif crossover(self.slow, self.fast):
                self.position.close()

    data = frame(bars)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = FractionalBacktest(data, SmaCross, cash=10_000, commission=0.0,
                                fractional_unit=1e-8, finalize_trades=False)
        started = time.perf_counter()
        stats = bt.run()
    return time.perf_counter() - started, int(stats["# Trades"])


def backtrader_run(bars) -> float:
    import backtrader as bt

    class SmaCross(bt.Strategy):
        def __init__(self) -> None:
            self.cross = bt.ind.CrossOver(bt.ind.SMA(period=FAST), bt.ind.SMA(period=SLOW))

        def next(self) -> None:
            if self.cross > 0:
                self.order_target_percent(target=0.99)
            elif self.cross < 0:
                self.close()

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=frame(bars)))
    cerebro.addstrategy(SmaCross)
    started = time.perf_counter()
    cerebro.run()
    return time.perf_counter() - started


def minute_bars(n: int, seed: int):
    """A seeded random walk on 1-minute timestamps: a million daily bars would overflow
    pandas' dates, and a million bars of drift would overflow float prices."""
    from pipeline_v2.backtest.data import from_arrays

    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.0008, n)))
    open_ = np.concatenate(([100.0], close[:-1])) * np.exp(rng.normal(0.0, 0.0002, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.0003, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.0003, n)))
    times = np.datetime64("2020-01-01T00:00", "s") + np.arange(n) * np.timedelta64(60, "s")
    return from_arrays(times, open_, high, low, close, rng.integers(1, 1000, n))


def run() -> None:
    bars = minute_bars(N_BARS, 3)
    samples = []
    for _ in range(repeats(5, 2)):
        started = time.perf_counter()
        backtest(bars, "sma_cross", {"fast": FAST, "slow": SLOW}, 0.0, 0.0)
        samples.append(time.perf_counter() - started)
    # The peers run on fewer bars (backtrader needs ~3 minutes for a million): per-bar rates.
    peer_bars = minute_bars(PEER_BARS, 3)
    bt_s, _ = backtesting_py(peer_bars)
    btr_s = backtrader_run(peer_bars)
    rates = [N_BARS / s / 1e6 for s in samples]
    case("backtest", f"sma_cross throughput, {N_BARS:,} bars", "M bars/s", rates,
         peer=f"backtesting.py ({PEER_BARS:,} bars)", peer_samples=[PEER_BARS / bt_s / 1e6],
         lower_is_better=False, target=5)
    case("backtest", "sma_cross throughput beside backtrader", "M bars/s", rates,
         peer=f"backtrader ({PEER_BARS:,} bars)", peer_samples=[PEER_BARS / btr_s / 1e6],
         lower_is_better=False)
    stress_bars = regime_bars(2000, 5)
    stress = [_timed(lambda: stress_test(stress_bars, "sma_cross", {"fast": FAST, "slow": SLOW},
                                         200, seed=1)) for _ in range(repeats(3, 1))]
    case("backtest", "200 stress scenarios on 2,000 bars", "s", stress, target=1)


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
