"""`pipeline report [TRIAL] [--json] [--html]` against what the real daemon stored."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline_v2.backtest import metrics
from pipeline_v2.backtest.series import load_returns
from pipeline_v2.reports.trial import CONSISTENCY_KEEP, read_equity_log
from pipeline_v2.store import Store
from tests.engine_helpers import run, store_for
from tests.report_helpers import builtin_stages, builtin_workspace

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six sma_cross trials through backtest (gate sharpe >= 0.1), a replay on later bars,
    stress and paper trading."""
    base = builtin_stages()
    base["backtest"]["gates"] = {"sharpe": ">= 0.1"}
    base["deploy"]["max_deployments"] = 6
    replay = {"run": "pipeline_v2.stages.builtin:backtest", "max_attempts": 1,
              "params": {"data": "market.csv", "start": "2017-06-01", "compare_to": "backtest"}}
    stages = {"backtest": base["backtest"], "replay": replay, "stress": base["stress"],
              "deploy": base["deploy"]}
    path = builtin_workspace(tmp_path_factory.mktemp("ws"), stages)
    run(path)
    return path


@pytest.fixture
def store(workspace: Path) -> Store:
    return store_for(workspace)


def report_json(invoke: Any, workspace: Path, *args: str) -> dict[str, Any]:
    result = invoke("report", *args, "--json", "--config", str(workspace))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["columns"]}


def test_trial_report_numbers_are_the_stored_ones(invoke, workspace: Path, store: Store) -> None:
    trial = next(t for t in store.list_trials() if t.status.value == "validated")
    stored = store.stage_results(trial.id)
    report = report_json(invoke, workspace, trial.ref)
    cols = by_name(report)
    assert [c["kind"] for c in report["columns"]] == ["in_sample", "backtest", "replay",
                                                      "stress", "paper"]
    bt, rp, st = stored["backtest"], stored["replay"], stored["stress"]
    for metric in report["metrics"]:
        assert cols["replay"]["metrics"][metric] == rp[metric]
    for metric in report["metrics"]:
        assert cols["backtest"]["metrics"][metric] == bt[metric]
    assert cols["optuna"]["metrics"] == {"objective": trial.value,
                                         "sharpe": trial.user_attrs["in_sample_sharpe"]}
    assert cols["stress"]["metrics"]["sharpe"] == {
        "p5": st["sharpe_p5"], "median": st["median_sharpe"], "p95": st["sharpe_p95"]}
    paper = store.latest_deployment(trial.id).metrics
    for metric in ("total_return", "sharpe", "max_drawdown", "trades"):
        assert cols["deploy"]["metrics"][metric] == paper[metric]
    chain = [("optuna", trial.user_attrs["in_sample_sharpe"]), ("backtest", bt["sharpe"]),
             ("replay", rp["sharpe"]), ("stress", st["median_sharpe"]),
             ("deploy", paper["sharpe"])]
    assert report["degradation"]["backtest -> replay"] == pytest.approx(rp["degradation"])
    assert report["degradation"] == pytest.approx(
        {f"{a} -> {b}": (x - y) / abs(x) for (a, x), (b, y)
         in zip(chain, chain[1:], strict=False)})
    outside = [f["sharpe"] for f in bt["folds"]] + [rp["sharpe"], st["median_sharpe"],
                                                     paper["sharpe"]]
    keep = [v > 0 and v >= CONSISTENCY_KEEP * bt["sharpe"] for v in outside]
    assert report["consistency"]["score"] == pytest.approx(sum(keep) / len(keep))
    assert report["folds"] == bt["folds"]
    assert report["fold_summary"]["worst_fold_sharpe"] == bt["worst_fold_sharpe"]
    assert report["dsr"] == bt["dsr_inputs"]
    assert report["stress_histogram"] == st["sharpe_histogram"]
    assert report["recommendation"]["verdict"] in ("deploy", "watch", "reject")


def test_dsr_inputs_match_the_saved_series(store: Store) -> None:
    trial = store.list_trials()[0]
    bt = store.stage_results(trial.id).get("backtest") or json.loads(
        store.conn.execute("SELECT results FROM stages WHERE trial_id = ? AND stage_name = ?",
                           [trial.id, "backtest"]).fetchone()[0])
    _, returns = load_returns(bt["returns_file"])
    skew, kurt = metrics.moments(returns)
    dsr = bt["dsr_inputs"]
    assert dsr["observations"] == len(returns) == 599
    assert dsr["skew"] == pytest.approx(skew, abs=1e-4)  # the file keeps float32
    assert dsr["kurtosis"] == pytest.approx(kurt, rel=1e-4)
    assert (dsr["n_trials"], dsr["sharpe_variance"]) == (6, 0.5)


def test_pipeline_report_keeps_the_ranked_table_and_adds_the_funnel(
        invoke, workspace: Path, store: Store) -> None:
    report = report_json(invoke, workspace)
    assert {"rank_by", "counts", "trials"} <= set(report)
    assert report["counts"] == store.trial_counts()
    funnel = report["funnel"]
    backtest = funnel["stages"][0]
    rejected = [t for t in store.list_trials() if t.status.value == "rejected"]
    assert rejected, "the gate should reject the weak trials"
    assert backtest["rejected"] == len(rejected) and backtest["passed"] == 6 - len(rejected)
    assert backtest["top_reasons"] == [["sharpe < 0.1", len(rejected)]]
    assert funnel["discovered"] == 6
    assert funnel["deployed"] == funnel["validated"] == 6 - len(rejected)
    rows = [r for r in store.stage_rows() if r["stage_name"] == "stress"]
    spans = [r["finished_at"] - r["started_at"] for r in rows if r["status"] == "passed"]
    assert report["durations"]["stress"]["median"] == pytest.approx(float(np.median(spans)))
    attempts = report["durations"]["stress"]["attempts"]
    assert attempts["n"] == len(spans)  # one attempt each: the same spans, from the events
    assert attempts["median"] == pytest.approx(float(np.median(spans)), abs=1e-6)
    assert report["rates"]["backtest"] == {"attempted": 6, "retry_rate": 0.0,
                                           "failure_rate": 0.0}
    assert sum(b["decided"] for b in report["throughput"]["buckets"]) == 6
    assert sum(b["discovered"] for b in report["throughput"]["buckets"]) == 6
    assert [t["trial"] for t in report["top"]] == [t["trial"] for t in report["trials"][:6]]
    assert report["studies"]["s"]["trials"] == 6  # rejected trials count in the PBO too
    assert report["studies"]["s"]["stage"] == "backtest"  # not the replay: fewer trials
    assert 0 <= report["studies"]["s"]["pbo"] <= 1


def chart(root: ET.Element, chart_id: str) -> ET.Element:
    found = [e for e in root.iter(f"{SVG}svg") if e.get("id") == chart_id]
    assert len(found) == 1, chart_id
    return found[0]


def bars(svg: ET.Element) -> list[tuple[str, float]]:
    return [(r.get("data-label"), float(r.get("data-value"))) for r in svg.iter(f"{SVG}rect")]


def test_trial_html_parses_and_its_charts_carry_the_json(invoke, workspace: Path,
                                                         store: Store, tmp_path: Path) -> None:
    trial = next(t for t in store.list_trials() if t.status.value == "validated")
    page = tmp_path / "trial.html"
    result = invoke("report", trial.ref, "--json", "--html", str(page), "--config",
                    str(workspace))
    assert result.exit_code == 0, result.output
    assert result.stderr == f"wrote {page}\n"
    report = json.loads(result.stdout)
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.replace(
        "http://www.w3.org/", "")  # nothing fetched, no script
    assert "@media print" in text
    root = ET.fromstring(text)
    folds = bars(chart(root, "chart-folds"))
    assert folds == [(f"fold {f['fold']}", f["sharpe"]) for f in report["folds"]]
    assert [v for _, v in bars(chart(root, "chart-stress"))] == report["stress_histogram"][
        "counts"]
    assert [v for _, v in bars(chart(root, "chart-pbo"))] == report["study_pbo"][
        "logit_histogram"]["counts"]
    line = next(chart(root, "chart-equity").iter(f"{SVG}polyline"))
    assert line.get("data-series") == "backtest"
    points = report["equity"]["backtest"]
    assert line.get("data-times").split() == [t for t, _ in points]
    assert [float(v) for v in line.get("data-values").split()] == [e for _, e in points]
    chart(root, "chart-drawdown")


def test_pipeline_html_funnel_and_pbo(invoke, workspace: Path, tmp_path: Path) -> None:
    page = tmp_path / "pipeline.html"
    result = invoke("report", "--html", str(page), "--config", str(workspace))
    assert result.exit_code == 0, result.output
    assert f"wrote {page}" in result.stdout
    assert "funnel" in result.stdout and "probability of backtest overfitting" in result.stdout
    report = report_json(invoke, workspace)
    root = ET.fromstring(page.read_text())
    funnel = report["funnel"]
    assert bars(chart(root, "chart-funnel")) == [
        ("discovered", 6), *[(f"passed {s['stage']}", s["passed"]) for s in funnel["stages"]],
        ("deployed", funnel["deployed"]), ("validated", funnel["validated"])]
    assert [v for _, v in bars(chart(root, "chart-pbo-s"))] == report["studies"]["s"][
        "logit_histogram"]["counts"]
    assert [v for _, v in bars(chart(root, "chart-throughput"))] == [
        b["decided"] for b in report["throughput"]["buckets"]]


def test_html_path_that_cannot_be_written(invoke, workspace: Path, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "r.html"
    result = invoke("report", "--html", str(target), "--config", str(workspace))
    assert result.exit_code == 1
    assert result.stderr == f'error: --html: cannot write "{target}": No such file or directory\n'


def test_equity_log_keeps_the_last_value_per_bar(tmp_path: Path) -> None:
    (tmp_path / "equity.jsonl").write_text(
        '["2020-01-01T00:00:00", 100.0]\n["2020-01-02T00:00:00", 101.0]\n'
        '["2020-01-02T00:00:00", 101.5]\n["2020-01-03T00:00:00", 10')  # restart, then a cut
    assert read_equity_log(tmp_path) == [["2020-01-01T00:00:00", 100.0],
                                         ["2020-01-02T00:00:00", 101.5]]


def test_unknown_trial_names_what_exists(invoke, workspace: Path) -> None:
    result = invoke("report", "99", "--config", str(workspace))
    assert result.exit_code == 2  # as `pipeline show` does
    assert result.stderr == 'error: no trial "99"; known: s: 6 trials, 0..5\n'


def test_trial_report_shows_markup_as_text(invoke, tmp_path: Path) -> None:
    from tests.test_cli_robust import MARKUP, markup_workspace

    markup_workspace(tmp_path)
    result = invoke("report", f"{MARKUP}:0", "--html", str(tmp_path / "t.html"))
    assert result.exit_code == 0, (result.output, result.exception)
    assert MARKUP in result.stdout
    ET.fromstring((tmp_path / "t.html").read_text())  # escaped in the page too


def test_the_report_of_an_empty_state_db_says_so(invoke) -> None:
    assert invoke("init").exit_code == 0
    result = invoke("report")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == ["no trials yet", "trials ranked by backtest.sharpe"]
    assert "throughput: nothing discovered yet" in lines  # was "... buckets of None s"


def test_the_report_says_its_throughput_in_words(invoke, workspace: Path) -> None:
    result = invoke("report", "--config", str(workspace))
    flow = [line for line in result.stdout.splitlines() if line.startswith("throughput:")]
    assert len(flow) == 1 and flow[0].startswith("throughput: 6 trials decided in ")
    assert "None" not in flow[0] and " 1 buckets " not in flow[0]
