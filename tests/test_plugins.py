"""Strategy plug-ins: one contract for the backtest, stress and the paper trader; fractional
positions; the look-ahead guard and the checks on what a plug-in returns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline_v2.backtest import LookAheadError, StrategyError, backtest, load_strategy
from pipeline_v2.backtest.data import from_arrays
from pipeline_v2.backtest.engine import simulate, simulate_all_in, simulate_fractional
from pipeline_v2.backtest.metrics import compute
from pipeline_v2.backtest.plugins import decide, incremental_positions, view_of
from pipeline_v2.backtest.stress import stress_test
from pipeline_v2.backtest.synthetic import regime_bars

FIX = "tests.fixtures.strategies"
RULE = {"fast": 5, "slow": 20}


@pytest.fixture(scope="module")
def bars():
    return regime_bars(400, 5)


# -- the same rule as a builtin and as a plug-in ------------------------------------------------


@pytest.mark.parametrize("name", [f"{FIX}:SmaCross", f"{FIX}:sma_cross_function"])
def test_a_plugin_gives_the_builtins_metrics(bars, name: str) -> None:
    theirs, their_run = backtest(bars, name, RULE, 0.001, 0.0005, lookahead=True)
    ours, our_run = backtest(bars, "sma_cross", RULE, 0.001, 0.0005)
    assert theirs == ours
    assert np.array_equal(their_run.equity, our_run.equity)
    assert ours["trades"] > 3
    assert stress_test(bars, name, RULE, 12, seed=3) == stress_test(bars, "sma_cross", RULE, 12,
                                                                     seed=3)


def test_builtins_are_strategies_of_the_same_contract(bars) -> None:
    strategy = load_strategy("mean_reversion", {"window": 10, "entry_z": 1.0})
    assert np.array_equal(decide(strategy, bars),
                          strategy.positions(view_of(bars)))


def test_a_class_that_does_not_subclass_strategy_works(bars) -> None:
    metrics, run = backtest(bars, f"{FIX}:Duck", {"weight": 0.25}, 0.0, 0.0)
    assert metrics["exposure"] == pytest.approx(0.25 * (len(bars) - 1) / len(bars))
    assert incremental_positions(load_strategy(f"{FIX}:Duck", {}), bars)[-1] == 0.5


def test_the_bars_a_plugin_gets_are_read_only(bars) -> None:
    with pytest.raises(ValueError, match="read-only"):
        backtest(bars, f"{FIX}:Scribbler", {})
    assert bars.close[0] > 0


# -- incremental (paper trader) and vectorised (backtest) agree ----------------------------------


@pytest.mark.parametrize(("name", "params"), [
    ("sma_cross", {"fast": 5, "slow": 20, "long_short": True}),
    ("mean_reversion", {"window": 15, "entry_z": 1.0, "exit_z": 0.2, "long_short": True}),
    (f"{FIX}:EmaTrend", {"fast": 4, "slow": 16}),
])
def test_incremental_and_vectorised_agree_bar_for_bar(bars, name: str, params: dict) -> None:
    vectorised = decide(load_strategy(name, params), bars)
    incremental = incremental_positions(load_strategy(name, params), bars)
    assert np.array_equal(incremental, vectorised)
    assert len(set(vectorised.tolist())) > 2  # really moves: not a constant
    if name.endswith("EmaTrend"):
        assert not np.isin(vectorised, (-1, 0, 1)).all()  # and really fractional


# -- fractional positions ---------------------------------------------------------------------


def test_fractional_positions_against_a_hand_computed_equity_curve() -> None:
    opens = [100.0, 100.0, 110.0, 120.0, 90.0]
    closes = [100.0, 110.0, 120.0, 100.0, 95.0]
    days = np.arange(5) + np.datetime64("2024-01-01")
    bars = from_arrays(days, opens, np.maximum(opens, closes) * 1.01,
                       np.minimum(opens, closes) * 0.99, closes)
    target = np.array([0.5, 1.0, -0.5, 0.0, 0.0])  # held: 0, 0.5, 1, -0.5, 0
    c, s = 0.01, 0.002
    run = simulate(bars, target, commission=c, slippage=s)

    # bar 1: buy 0.5 of 10,000 at 100 * (1 + s), commission on top
    fill1 = 100 * (1 + s)
    units1 = 0.5 * 10_000 / (fill1 * (1 + c))
    cash1 = 10_000 - units1 * fill1 * (1 + c)  # = 5,000
    eq1 = cash1 + units1 * 110
    # bar 2: liquidation value at 110 (a sale: 110 * (1 - s), less commission), then buy up to 1.0
    value2 = cash1 + units1 * 110 * (1 - s) * (1 - c)
    fill2 = 110 * (1 + s)
    units2 = 1.0 * value2 / (fill2 * (1 + c))
    cash2 = cash1 - (units2 - units1) * fill2 * (1 + c)
    eq2 = cash2 + units2 * 120
    # bar 3: flip to -0.5: sell everything and short half the liquidation value, at 120 * (1 - s)
    fill3 = 120 * (1 - s)
    value3 = cash2 + units2 * fill3 * (1 - c)
    units3 = -0.5 * value3 / (fill3 * (1 + c))
    cash3 = value3 - units3 * fill3 - c * abs(units3) * fill3
    eq3 = cash3 + units3 * 100
    # bar 4: buy back at 90 * (1 + s)
    fill4 = 90 * (1 + s)
    value4 = cash3 + units3 * fill4 - c * abs(units3) * fill4
    expected = [10_000, eq1, eq2, eq3, value4]

    assert cash1 == pytest.approx(5_000)
    assert run.equity.tolist() == pytest.approx(expected, rel=1e-12)
    assert run.held.tolist() == [0.0, 0.5, 1.0, -0.5, 0.0]
    assert run.trade_returns.tolist() == pytest.approx([value3 / 10_000 - 1, value4 / value3 - 1],
                                                       rel=1e-12)
    assert (run.trade_entries.tolist(), run.trade_exits.tolist()) == ([1, 3], [3, 4])
    metrics = compute(run, 252.0)
    assert metrics["exposure"] == pytest.approx((0.5 + 1 + 0.5) / 5)
    assert metrics["trades"] == 2
    assert metrics["final_equity"] == pytest.approx(value4, rel=1e-12)


def test_the_fractional_path_keeps_the_all_in_conventions(bars) -> None:
    target = load_strategy("sma_cross", {"fast": 3, "slow": 12, "long_short": True})
    signal = decide(target, bars)
    fast, general = (simulate_all_in(bars, signal, 0.001, 0.0007),
                     simulate_fractional(bars, signal, 0.001, 0.0007))
    assert np.max(np.abs(general.equity / fast.equity - 1)) < 1e-10
    assert np.allclose(general.trade_returns, fast.trade_returns, rtol=1e-10, atol=1e-13)
    assert np.array_equal(general.trade_entries, fast.trade_entries)
    assert np.array_equal(general.trade_exits, fast.trade_exits)


def test_a_smaller_position_costs_proportionally_less() -> None:
    bars = regime_bars(300, 2)
    signal = decide(load_strategy("sma_cross", {"fast": 5, "slow": 20}), bars)
    full = simulate(bars, signal, 0.0, 0.0)
    half = simulate(bars, signal * 0.5, 0.0, 0.0)
    full_r = full.equity[1:] / full.equity[:-1] - 1
    half_r = half.equity[1:] / half.equity[:-1] - 1
    assert np.all(np.abs(half_r) <= np.abs(full_r) + 1e-12)
    assert half.trade_entries.tolist() == full.trade_entries.tolist()


# -- guard rails ------------------------------------------------------------------------------


def test_the_lookahead_check_catches_a_strategy_that_peeks_one_bar_ahead(bars) -> None:
    with pytest.raises(LookAheadError) as caught:
        backtest(bars, f"{FIX}:Peek", {}, lookahead=True)
    t = len(bars) // 2
    assert str(caught.value) == (
        f"{FIX}:Peek: look-ahead: the position at bar {t} ({bars.time[t]}) is "
        f"{np.sign(bars.close[t + 1] - bars.close[t]):g} with all {len(bars)} bars but 0 with "
        f"the bars up to bar {t} ({bars.time[t]}); a position decided at a bar's close may use "
        "only bars up to that close"
    )


@pytest.mark.parametrize(("name", "params"), [
    (f"{FIX}:Lagged", {}), ("sma_cross", RULE), (f"{FIX}:EmaTrend", {}),
    ("mean_reversion", {"window": 10, "entry_z": 1.0, "long_short": True}),
])
def test_the_lookahead_check_passes_honest_strategies(bars, name: str, params: dict) -> None:
    metrics, _ = backtest(bars, name, params, lookahead=True)
    assert metrics["bars"] == len(bars)


@pytest.mark.parametrize(("mode", "message"), [
    ("nan", "position at bar 7 (2016-01-13T00:00:00) is nan; expected a number in [-1, 1] "
            "(1 bad bar(s))"),
    ("big", "position at bar 3 (2016-01-07T00:00:00) is 1.5; expected a number in [-1, 1] "
            "(1 bad bar(s))"),
    ("short", "returned 399 position(s) for 400 bars; expected one per bar"),
])
def test_bad_positions_name_the_bar(bars, mode: str, message: str) -> None:
    with pytest.raises(StrategyError) as caught:
        backtest(bars, f"{FIX}:Broken", {"mode": mode})
    assert str(caught.value) == f"{FIX}:Broken: {message}"


def test_a_bad_step_names_the_bar(bars) -> None:
    strategy = load_strategy(f"{FIX}:Broken", {"mode": "big"})
    with pytest.raises(StrategyError) as caught:
        incremental_positions(strategy, bars)
    assert str(caught.value) == (f"{FIX}:Broken: position at bar 3 (2016-01-07T00:00:00) is "
                                 "1.5; expected a number in [-1, 1] (1 bad bar(s))")


@pytest.mark.parametrize(("name", "message"), [
    ("nowhere.strat:Foo", "cannot import \"nowhere.strat:Foo\": No module named 'nowhere'"),
    (f"{FIX}:Missing", f'cannot import "{FIX}:Missing": module "{FIX}" has no attribute '
                       '"Missing"'),
    (f"{FIX}:NoPositions", f'"{FIX}:NoPositions": class NoPositions has no positions(bars) '
                           "method; expected a class (params, model_dir) with positions(bars), "
                           "or a function (bars, params, model_dir)"),
    (f"{FIX}:one_argument", f'"{FIX}:one_argument": one_argument(bars: \'BarsView\') -> '
                            "'np.ndarray' does not take 3 argument(s); expected a class "
                            "(params, model_dir) with positions(bars), or a function (bars, "
                            "params, model_dir)"),
    ("smacross", 'unknown strategy "smacross" (expected one of sma_cross, mean_reversion)'),
])
def test_a_strategy_that_cannot_load_is_one_line(name: str, message: str) -> None:
    with pytest.raises(StrategyError) as caught:
        load_strategy(name, {})
    assert str(caught.value) == message


# -- config check ------------------------------------------------------------------------------


def _config(tmp_path, strategy: str):
    path = tmp_path / "stages.json"
    path.write_text(json.dumps({"stages": {"backtest": {
        "run": "pipeline_v2.stages.builtin:backtest", "params": {"strategy": strategy}}}}))
    return path


@pytest.mark.parametrize(("strategy", "message"), [
    ("mypkg.strat:Foo", "cannot import \"mypkg.strat:Foo\": No module named 'mypkg'"),
    ("smacross", 'unknown strategy "smacross" (expected one of sma_cross, mean_reversion, or '
                 '"package.module:name")'),
    (f"{FIX}:one_argument", f'"{FIX}:one_argument": one_argument(bars: \'BarsView\') -> '
                            "'np.ndarray' does not take 3 argument(s); expected a class "
                            "(params, model_dir) with positions(bars), or a function (bars, "
                            "params, model_dir)"),
])
def test_config_check_names_the_strategy(invoke, tmp_path, strategy: str, message: str) -> None:
    path = _config(tmp_path, strategy)
    result = invoke("config", "check", "--config", str(path))
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {path}: stages.backtest.params.strategy: {message}\n"


def test_config_check_accepts_a_plugin(invoke, tmp_path) -> None:
    path = _config(tmp_path, f"{FIX}:EmaTrend")
    result = invoke("config", "check", "--config", str(path))
    assert result.exit_code == 0, result.output


# -- through the daemon: the builtin stages run plug-ins -------------------------------------


def _stage_workspace(tmp_path, strategy: str):
    from pipeline_v2.backtest.data import save_csv
    from tests.engine_helpers import workspace

    save_csv(regime_bars(300, 5), tmp_path / "market.csv")
    params = {"data": "market.csv", "strategy": strategy, "dsr_trials": 1,
              "dsr_sharpe_variance": 0.0}
    stage = {"run": "pipeline_v2.stages.builtin:backtest", "max_attempts": 3, "params": params}
    stress = {"run": "pipeline_v2.stages.builtin:stress", "max_attempts": 1,
              "params": {**params, "scenarios": 8}}
    return workspace(tmp_path, {"backtest": stage, "stress": stress})


def test_the_backtest_stage_rejects_a_strategy_that_looks_ahead(tmp_path, invoke) -> None:
    from pipeline_v2.models import StageStatus, TrialStatus
    from tests.engine_helpers import run, store_for

    path = _stage_workspace(tmp_path, f"{FIX}:Peek")
    run(path)
    store = store_for(path)
    trial = store.find_trial("s:0")
    backtest_stage = store.stages_of(trial.id)[0]
    assert (trial.status, backtest_stage.status) == (TrialStatus.REJECTED, StageStatus.REJECTED)
    assert backtest_stage.reason.startswith(f"{FIX}:Peek: look-ahead: the position at bar 150 ")
    by_hand = invoke("backtest", "0")
    assert by_hand.exit_code == 1
    assert by_hand.stderr == f"error: trial s:0: rejected: {backtest_stage.reason}\n"


def test_the_builtin_stages_run_a_plugin_and_name_one_that_cannot_load(tmp_path) -> None:
    from pipeline_v2.models import StageStatus
    from tests.engine_helpers import run, store_for

    path = _stage_workspace(tmp_path, f"{FIX}:EmaTrend")
    run(path)
    store = store_for(path)
    first, second = store.stages_of(store.find_trial("s:0").id)
    assert (first.status, second.status) == (StageStatus.PASSED, StageStatus.PASSED)
    assert 0 < first.results["exposure"] < 1 and second.results["scenarios"] == 8

    other = tmp_path / "other"
    other.mkdir()
    path = _stage_workspace(other, "mypkg.strat:Foo")
    run(path)
    stage = store_for(path).stages_of(store_for(path).find_trial("s:0").id)[0]
    assert stage.error_message == ("stages.backtest.params.strategy: cannot import "
                                   "\"mypkg.strat:Foo\": No module named 'mypkg'")
    assert stage.attempts == 1  # an engine error: not retried


def test_an_adhoc_backtest_runs_a_plugin_and_refuses_one_that_looks_ahead(invoke, tmp_path
                                                                          ) -> None:
    from pipeline_v2.backtest.data import save_csv

    data = tmp_path / "market.csv"
    save_csv(regime_bars(300, 5), data)
    ok = invoke("backtest", "--data", str(data), "--strategy", f"{FIX}:EmaTrend", "--param",
                "fast=4", "--json")
    assert ok.exit_code == 0, ok.output
    assert 0 < json.loads(ok.stdout)["exposure"] < 1
    peek = invoke("backtest", "--data", str(data), "--strategy", f"{FIX}:Peek")
    assert peek.exit_code == 2
    assert peek.stderr.startswith(f"error: {FIX}:Peek: look-ahead: the position at bar 150 ")


def test_a_plugin_named_by_the_model_is_checked_when_the_stage_runs(tmp_path) -> None:
    from pipeline_v2.backtest.data import save_csv
    from pipeline_v2.backtest.model import save_model
    from pipeline_v2.stages import builtin
    from pipeline_v2.stages.context import StageContext

    save_csv(regime_bars(100, 5), tmp_path / "market.csv")
    model_dir = tmp_path / "model"
    save_model(model_dir, "mypkg.strat:Foo", {}, data="../market.csv")
    ctx = StageContext(study="s", number=0, params={}, user_attrs={}, value=None,
                       model_dir=model_dir, run_dir=tmp_path, stage="stress", stage_params={},
                       config_dir=tmp_path)
    with pytest.raises(StrategyError) as caught:
        builtin.stress(ctx)
    assert str(caught.value) == (f"{model_dir / 'model.json'}: strategy: cannot import "
                                 "\"mypkg.strat:Foo\": No module named 'mypkg'")


def test_a_plugin_warms_up_on_the_bars_before_the_window_as_a_builtin_does(invoke, tmp_path
                                                                           ) -> None:
    from pipeline_v2.backtest.data import save_csv

    data = tmp_path / "market.csv"
    save_csv(regime_bars(400, 5), data)
    runs = [invoke("backtest", "--data", str(data), "--strategy", name, "--param", "fast=5",
                   "--param", "slow=20", "--start", "2016-06-01", "--json")
            for name in (f"{FIX}:SmaCross", "sma_cross", f"{FIX}:sma_cross_function")]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    plugin, builtin, no_warmup = (json.loads(r.stdout) for r in runs)
    assert plugin == builtin
    assert no_warmup["bars"] == builtin["bars"]
    assert no_warmup != builtin  # without warm-up it cannot trade in the first 20 bars


def test_a_plugin_beside_the_config_is_found_by_config_check_and_the_stages(invoke, tmp_path
                                                                            ) -> None:
    from pipeline_v2.models import StageStatus
    from tests.engine_helpers import run, store_for

    (tmp_path / "beside_config.py").write_text(
        "import numpy as np\n\n\n"
        "def half_long(bars, params, model_dir):\n"
        "    return np.full(len(bars), 0.5)\n"
    )
    path = _stage_workspace(tmp_path, "beside_config:half_long")
    checked = invoke("config", "check", "--config", str(path))
    assert checked.exit_code == 0, checked.output
    run(path)
    store = store_for(path)
    first, second = store.stages_of(store.find_trial("s:0").id)
    assert (first.status, second.status) == (StageStatus.PASSED, StageStatus.PASSED), (
        first.error_message, second.error_message)
    assert first.results["exposure"] == pytest.approx(0.5 * 299 / 300)
