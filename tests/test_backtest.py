"""The reference engine: cross-checked against backtesting.py on real market data, against a
plain-Python reference to 1e-10, the DSR against the paper's worked example, and bad data."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline_v2.backtest import backtest, load_bars
from pipeline_v2.backtest.data import from_arrays
from pipeline_v2.backtest.metrics import (
    deflated_sharpe,
    expected_max_sharpe,
    periods_per_year,
    sharpe_ratio,
)
from pipeline_v2.backtest.strategies import positions
from pipeline_v2.backtest.stress import stress_test

backtesting = pytest.importorskip("backtesting")
GOOG_CSV = Path(backtesting.__file__).parent / "test" / "GOOG.csv"


def goog():
    return load_bars(GOOG_CSV)


def synthetic(n: int = 600, seed: int = 3, start: str = "2020-01-06", step: str = "D",
              weekdays: bool = True):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0.0004, 0.015, n)))
    open_ = close * np.exp(rng.normal(0, 0.004, n))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n))
    if weekdays:
        days = np.busday_offset(np.datetime64(start, "D"), np.arange(n), roll="forward")
        time = days.astype("datetime64[s]")
    else:
        time = np.datetime64(start, "s") + np.arange(n) * np.timedelta64(1, step)
    return from_arrays(time, open_, high, low, close)


# -- cross-check against backtesting.py ----------------------------------------------------------


def _backtesting_run(commission: float, long_short: bool):
    from backtesting import Strategy
    from backtesting.lib import FractionalBacktest, crossover
    from backtesting.test import GOOG, SMA

    class SmaCross(Strategy):
        def init(self) -> None:
            self.fast = self.I(SMA, self.data.Close, 10)
            self.slow = self.I(SMA, self.data.Close, 20)

        def next(self) -> None:
            if crossover(self.fast, self.slow):
                self.position.close()
                self.buy(size=0.99999999)
            elif crossover(self.slow, self.fast):
                self.position.close()
                if long_short:
                    self.sell(size=0.99999999)

    # Same conventions as ours: fractional units, no early close of the last trade,
    # commission on both fills; spread (applied on entry only there) left at 0.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = FractionalBacktest(GOOG, SmaCross, cash=10_000, commission=commission, spread=0.0,
                                fractional_unit=1e-8, finalize_trades=False)
        return bt.run()


@pytest.mark.parametrize("commission", [0.0, 0.001])
@pytest.mark.parametrize("long_short", [False, True])
def test_matches_backtesting_py_on_goog(commission: float, long_short: bool) -> None:
    stats = _backtesting_run(commission, long_short)
    metrics, run = backtest(goog(), "sma_cross", {"fast": 10, "slow": 20,
                                                  "long_short": long_short}, commission, 0.0)
    theirs = stats["_equity_curve"]["Equity"].to_numpy()
    assert metrics["trades"] == stats["# Trades"]
    assert metrics["final_equity"] == pytest.approx(stats["Equity Final [$]"], rel=1e-6)
    assert np.max(np.abs(theirs / run.equity - 1)) < 1e-6
    their_sharpe = sharpe_ratio(theirs[1:] / theirs[:-1] - 1, 252)
    assert metrics["sharpe"] == pytest.approx(their_sharpe, abs=1e-6)


# -- a plain-Python reference ---------------------------------------------------------------------


def reference(bars, target, commission, slippage, cash=10_000.0):
    """Event loop: at each open trade to the previous close's target; mark at the close."""
    equity_curve, held_curve, trades = [], [], []
    held, units, fill, entry_equity, equity = 0.0, 0.0, 0.0, cash, cash
    for i in range(len(bars)):
        want = target[i - 1] if i else 0.0
        if want != held:
            price = bars.open[i]
            if held != 0.0:
                exit_fill = price * (1 - slippage * held)
                equity = entry_equity + held * units * (exit_fill - fill) \
                    - commission * units * fill - commission * units * exit_fill
                trades.append(equity / entry_equity - 1)
            held = want
            if held != 0.0:
                fill = price * (1 + slippage * held)
                units = equity / (fill * (1 + commission))
                entry_equity = equity
        if held != 0.0:
            equity_now = entry_equity + held * units * (bars.close[i] - fill) \
                - commission * units * fill
        else:
            equity_now = equity
        equity_curve.append(equity_now)
        held_curve.append(held)
    return np.array(equity_curve), np.array(held_curve), np.array(trades)


def reference_metrics(equity, held, trades, ppy):
    r = [equity[i] / equity[i - 1] - 1 for i in range(1, len(equity))]
    mean = sum(r) / len(r)
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))
    down = math.sqrt(sum(min(x, 0) ** 2 for x in r) / len(r))
    peak, dd = equity[0], 0.0
    for value in equity:
        peak = max(peak, value)
        dd = max(dd, 1 - value / peak)
    cagr = (equity[-1] / equity[0]) ** (ppy / (len(equity) - 1)) - 1
    wins = [t for t in trades if t > 0]
    losses = [t for t in trades if t < 0]
    return {
        "total_return": equity[-1] / equity[0] - 1, "sharpe": mean / std * math.sqrt(ppy),
        "sortino": mean / down * math.sqrt(ppy), "max_drawdown": dd, "cagr": cagr,
        "calmar": cagr / dd, "win_rate": len(wins) / len(trades),
        "profit_factor": sum(wins) / -sum(losses), "expectancy": sum(trades) / len(trades),
        "trades": len(trades), "exposure": sum(1 for h in held if h) / len(held),
    }


@pytest.mark.parametrize(("strategy", "params"), [
    ("sma_cross", {"fast": 5, "slow": 30}),
    ("sma_cross", {"fast": 3, "slow": 12, "long_short": True}),
    ("mean_reversion", {"window": 15, "entry_z": 1.2, "exit_z": 0.2}),
    ("mean_reversion", {"window": 10, "entry_z": 1.0, "long_short": True}),
])
def test_engine_and_metrics_match_the_reference_to_1e_10(strategy: str, params: dict) -> None:
    bars = synthetic()
    target = positions(bars, strategy, params)
    equity, held, trades = reference(bars, target, 0.001, 0.0007)
    metrics, run = backtest(bars, strategy, params, 0.001, 0.0007)
    assert np.max(np.abs(run.equity / equity - 1)) < 1e-10
    assert np.array_equal(run.held, held)
    expected = reference_metrics(equity, held, trades, 252.0)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key


def test_signals_fill_at_the_next_open() -> None:
    bars = synthetic(80)
    target = positions(bars, "sma_cross", {"fast": 3, "slow": 8})
    first = int(np.flatnonzero(target)[0])
    _, run = backtest(bars, "sma_cross", {"fast": 3, "slow": 8}, 0.0, 0.0)
    assert run.held[first] == 0 and run.held[first + 1] == 1


# -- metrics conventions ---------------------------------------------------------------------------


def test_dsr_matches_the_papers_worked_example() -> None:
    # Bailey & Lopez de Prado (2014): annualised SR 2.5 over 1,250 daily observations, 100
    # trials whose annualised Sharpe ratios have variance 1/2, skew -3, kurtosis 10.
    sr, variance = 2.5 / math.sqrt(250), 0.5 / 250
    assert expected_max_sharpe(100, variance) == pytest.approx(0.1132, abs=5e-5)
    assert deflated_sharpe(sr, 1250, -3.0, 10.0, 100, variance) == pytest.approx(0.9004, abs=5e-4)


def test_dsr_falls_as_trials_grow() -> None:
    sr, variance = 0.1, 0.002
    values = [deflated_sharpe(sr, 1000, 0.0, 3.0, n, variance) for n in (1, 10, 100, 1000)]
    assert values == sorted(values, reverse=True)
    assert values[0] > 0.99


@pytest.mark.parametrize(("weekdays", "step", "expected"), [
    (True, "D", 252.0), (False, "D", 365.0), (False, "h", 365.0 * 24),
])
def test_periods_per_year_from_spacing(weekdays: bool, step: str, expected: float) -> None:
    bars = synthetic(200, weekdays=weekdays, step=step)
    assert periods_per_year(bars.time) == pytest.approx(expected)


def test_hourly_weekday_data_is_252_times_24() -> None:
    days = np.busday_offset(np.datetime64("2021-01-04"), np.arange(30), roll="forward")
    hours = (days.astype("datetime64[h]")[:, None] + np.arange(24)).ravel()
    assert periods_per_year(hours) == pytest.approx(252.0 * 24)


# -- stress ---------------------------------------------------------------------------------


def test_stress_is_seeded_bit_for_bit() -> None:
    bars = goog()
    params = {"fast": 10, "slow": 30}
    first = stress_test(bars, "sma_cross", params, 40, seed=7)
    again = stress_test(bars, "sma_cross", params, 40, seed=7)
    other = stress_test(bars, "sma_cross", params, 40, seed=8)
    assert first == again
    assert first != other
    assert set(first["by_method"]) == {"bootstrap", "regime", "volatility", "crash"}
    assert sum(m["scenarios"] for m in first["by_method"].values()) == 40
    assert 0 <= first["profitable_fraction"] <= 1
    assert first["sharpe_p5"] <= first["median_sharpe"] <= first["sharpe_p95"]


def test_scenarios_are_valid_bars() -> None:
    from pipeline_v2.backtest.data import validate
    from pipeline_v2.backtest.scenarios import METHODS, scenario_bars

    bars = synthetic(300)
    for method in METHODS:
        path = scenario_bars(bars, method, np.random.default_rng(1))
        validate(path)
        assert len(path) == len(bars)


# -- data loading and bad data ---------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = "Date,Open,High,Low,Close,Volume\n" + "".join(
    f"2021-01-{d:02d},{100 + d},{102 + d},{99 + d},{101 + d},1000\n" for d in range(1, 29)
)


def test_csv_variants(tmp_path: Path) -> None:
    unnamed = GOOD.replace("Date,", ",", 1)
    epoch = "timestamp,open,high,low,close\n" + "".join(
        f"{1609459200 + 86400 * d},{100 + d},{102 + d},{99 + d},{101 + d}\n" for d in range(28)
    )
    for text in (GOOD, unnamed, epoch, GOOD.upper().replace("2021-01-", "2021-01-")):
        bars = load_bars(write(tmp_path, text))
        assert len(bars) == 28
    assert str(load_bars(write(tmp_path, epoch)).time[0]) == "2021-01-01T00:00:00"


BAD_DATA = [
    ("date,open,high,close\n2021-01-01,1,2,1\n2021-01-02,1,2,1\n",
     "missing column(s) low (found date, open, high, close; expected open, high, low, close, "
     "optionally volume, case-insensitive)"),
    (GOOD.replace("2021-01-05,105", "2021-01-05,nan"),
     "data row 5: open must be a positive number, got nan (1 bad row(s))"),
    (GOOD.replace("2021-01-05,105", "2021-01-05,-105"),
     "data row 5: open must be a positive number, got -105.0 (1 bad row(s))"),
    (GOOD.replace("2021-01-05,105,107,104", "2021-01-05,105,103,104"),
     "data row 5: high 103 < low 104 (1 bad row(s))"),
    (GOOD.replace("2021-01-06", "2021-01-05"),
     "data row 6: duplicate timestamp 2021-01-05T00:00:00"),
    (GOOD.replace("2021-01-06", "2021-01-02"),
     "data row 6: timestamp 2021-01-02T00:00:00 is before the previous one "
     "(2021-01-05T00:00:00); expected increasing times"),
    ("open,high,low,close\n" + "".join(f"{100 + d},{102 + d},{99 + d},{101 + d}\n"
                                       for d in range(28)),
     "no date column (expected one named date, time, datetime, timestamp, or an unnamed first "
     "column as pandas writes it; found open, high, low, close)"),
]


@pytest.mark.parametrize(("text", "message"), BAD_DATA)
def test_bad_data_is_one_clear_line(invoke, tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    result = invoke("backtest", "--data", str(path), "--strategy", "sma_cross",
                    "--param", "fast=2", "--param", "slow=5")
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {path}: {message}\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--strategy", "momentum"],
     'unknown strategy "momentum" (expected one of sma_cross, mean_reversion)'),
    (["--strategy", "sma_cross", "--param", "fast=2", "--param", "slw=5"],
     'sma_cross: unknown parameter "slw" (expected fast, slow, long_short)'),
    (["--strategy", "sma_cross", "--param", "fast=2.5", "--param", "slow=5"],
     'sma_cross: parameter "fast" must be int, got 2.5'),
    (["--strategy", "sma_cross", "--param", "fast=9", "--param", "slow=5"],
     "sma_cross: fast (9) must be smaller than slow (5)"),
    (["--strategy", "sma_cross", "--param", "fast", "--param", "slow=5"],
     '--param: expected key=value, got "fast"'),
    # these named the engine's "start" / "end", not the option
    (["--strategy", "sma_cross", "--param", "fast=2", "--param", "slow=5", "--start", "soon"],
     '--start: expected a date like "2021-06-30", got "soon"'),
    (["--strategy", "sma_cross", "--param", "fast=2", "--param", "slow=5", "--end", "2021-13-01"],
     '--end: expected a date like "2021-06-30", got "2021-13-01"'),
])
def test_bad_strategy_input(invoke, tmp_path: Path, args: list[str], message: str) -> None:
    result = invoke("backtest", "--data", str(write(tmp_path, GOOD)), *args)
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {message}\n"


def test_too_few_bars(invoke, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    result = invoke("backtest", "--data", str(path), "--strategy", "sma_cross",
                    "--param", "fast=10", "--param", "slow=40")
    assert result.exit_code == 2
    assert result.stderr == (f"error: {path}: 28 bars are too few for sma_cross(fast=10, "
                             "slow=40, long_short=False); it needs at least 41\n")


def test_adhoc_json_has_the_gate_metric_names(invoke) -> None:
    import json

    result = invoke("backtest", "--data", str(GOOG_CSV), "--strategy", "sma_cross", "--param",
                    "fast=10", "--param", "slow=20", "--commission", "0", "--slippage", "0",
                    "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"total_return", "cagr", "sharpe", "sortino", "calmar", "max_drawdown", "win_rate",
            "profit_factor", "expectancy", "trades", "exposure"} <= set(data)
    assert data["trades"] == 46


def test_indicators_warm_up_on_the_bars_before_the_window(tmp_path: Path) -> None:
    from pipeline_v2 import control
    from pipeline_v2.backtest import metrics
    from pipeline_v2.backtest.data import save_csv
    from pipeline_v2.backtest.engine import simulate
    from pipeline_v2.backtest.synthetic import regime_bars

    bars = regime_bars(600, 0)
    path = tmp_path / "prices.csv"
    save_csv(bars, path)
    params = {"fast": 20, "slow": 240}
    start, end = str(bars.time[300])[:10], str(bars.time[539])[:10]
    lo, hi = 300, 539
    assert len(bars.window(start, end)) == 239  # fewer than slow=240: only history helps
    got = control.backtest_adhoc(path, "sma_cross", params, 0.0, 0.0, start, end)
    # The signals are those of the whole history; trading happens inside the window only.
    window = bars.slice(lo, hi)
    run = simulate(window, positions(bars.slice(0, hi), "sma_cross", params)[lo:], 0.0, 0.0)
    assert got == metrics.compute(run, metrics.periods_per_year(window.time))
    assert got["exposure"] > 0
    with pytest.raises(Exception, match=r"239 bars \(and 1 before the window\) are too few"):
        control.backtest_adhoc(path, "sma_cross", params, 0.0, 0.0, str(bars.time[1])[:10],
                               str(bars.time[240])[:10])


def test_the_package_declares_its_license_as_an_spdx_string() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml")
                            .read_text())
    assert project["project"]["license"] == "MIT"  # a table is deprecated: install warns
    assert "setuptools>=77" in project["build-system"]["requires"]
