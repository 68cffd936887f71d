"""The dashboard in a real browser: headless Chromium (OS package) driven by Playwright, against a
real daemon processing a real Optuna study. Skips, saying why, where there is no browser."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.engine_helpers import FIX, store_for, wait_for, workspace
from tests.http_helpers import TOKEN, with_daemon

CHROMIUM = os.environ.get("PIPELINE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# `DASHBOARD_SCREENSHOT=docs/dashboard.png pytest tests/test_dashboard_browser.py` refreshes the
# README's picture; otherwise the screenshot goes to the test's tmp folder.
SHOT = os.environ.get("DASHBOARD_SCREENSHOT")


def _browser_or_skip() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no browser library: pip install -e '.[browser]' (Playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium)")
    return sync_playwright


def stage(target: str) -> dict:
    return {"run": f"{FIX}:{target}", "max_attempts": 1, "timeout_seconds": 20}


def cli_status(path: Path) -> dict[str, Any]:
    """`pipeline status --json` (in this process: see the report on the WAL files vanishing
    when another process closes the state DB while the daemon runs)."""
    from typer.testing import CliRunner

    from pipeline_v2.cli import app

    result = CliRunner().invoke(app, ["status", "--json", "--config", str(path)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_pages_numbers_and_actions_in_chromium(tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    trials = 4
    path = workspace(tmp_path, {"a": stage("metric_from_param"), "b": stage("always_fail")},
                     trials=trials, daemon={"check_interval": 0.1, "health_check_interval": 0.2,
                                            "workers": 2, "http": "127.0.0.1:0",
                                            "http_token": TOKEN})
    seen: dict[str, Any] = {}
    problems: list[str] = []
    expected_refusal = {"on": False}

    def on_console(msg: Any) -> None:
        if msg.type == "error" and not (expected_refusal["on"] and "401" in msg.text):
            problems.append(f"console: {msg.text}")

    def client(base: str) -> None:
        store = store_for(path)
        wait_for(lambda: store.trial_counts().get("failed") == trials)
        status = cli_status(path)
        seen["status"] = status
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport={"width": 1000, "height": 900})
            page = context.new_page()
            page.on("console", on_console)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

            page.goto(base + "/")
            counts = {el.get_attribute("data-count"): int(el.inner_text())
                      for el in page.query_selector_all("[data-count]")}
            seen["counts"] = counts
            seen["stage_cells"] = {
                (el.get_attribute("data-stage"), el.get_attribute("data-status")):
                    int(el.inner_text()) for el in page.query_selector_all("[data-stage]")}
            seen["health"] = page.inner_text("#health .overall")
            seen["funnel"] = page.get_attribute('#chart-funnel rect[data-label="discovered"]',
                                                "data-value")
            seen["status_after"] = cli_status(path)  # health may move between the two reads
            page.screenshot(path=SHOT or str(tmp_path / "dashboard.png"), full_page=False)
            # it refreshes itself: the stamp moves without a reload
            first = page.inner_text("#updated")
            page.wait_for_function(f"document.getElementById('updated').textContent != '{first}'",
                                   timeout=10_000)

            page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing spills
            seen["phone_overflow"] = page.evaluate(
                "document.documentElement.scrollWidth - window.innerWidth")
            page.set_viewport_size({"width": 1000, "height": 900})

            page.goto(base + "/ui/trials")
            seen["rows"] = len(page.query_selector_all("#trials tbody tr"))
            seen["total"] = page.inner_text("#total")
            page.select_option("select[name=status]", "passed")
            page.click(".filters button[type=submit]")
            page.wait_for_url("**status=passed**")
            seen["passed_total"] = page.inner_text("#total")
            page.goto(base + "/ui/trials?sort=a.sharpe&desc=1")
            seen["sorted"] = [a.inner_text() for a in page.query_selector_all(
                "#trials tbody tr td:first-child a")]

            from pipeline_v2 import control

            store.wakes_daemon = True  # as the CLI's store: the daemon sees the pause at once
            control.pause(store, None)  # the daemon starts nothing new (retried stays pending)
            page.goto(base + "/ui/trials/s:0")
            seen["stages_before"] = page.inner_text("#stages")
            page.wait_for_selector("#report svg#chart-equity")  # the report, inlined by script
            seen["charts"] = sorted(el.get_attribute("id") for el in page.query_selector_all(
                "#report svg.chart"))
            expected_refusal["on"] = True  # the refused click's 401 is logged by the browser
            page.once("dialog", lambda d: d.accept(""))  # no token given
            page.click("button[data-action=retry]")
            page.wait_for_selector("#action-result.refused")
            seen["refused"] = page.inner_text("#action-result")
            expected_refusal["on"] = False
            seen["after_refusal"] = store.find_trial("s:0").status.value
            page.once("dialog", lambda d: d.accept(TOKEN))
            page.click("button[data-action=retry]")
            page.wait_for_selector("#action-result.done")
            page.wait_for_function(
                "document.querySelector('#stages').innerText.includes('pending')", timeout=10_000)
            seen["stages_after"] = page.inner_text("#stages")
            seen["events"] = page.inner_text("#events")

            page.goto(base + "/ui/deployments")
            seen["deployments"] = page.inner_text("#deploys")
            context.close()
        seen["retried"] = [e["message"] for e in store.events_of(store.find_trial("s:0").id)
                           if (e["message"] or "").startswith("retry by hand")]
        seen["event"] = [e for e in store.events_of(store.find_trial("s:0").id)
                         if e["kind"] == "http.action"]

    with_daemon(path, client, timeout=60)
    assert problems == []
    status = seen["status"]
    for name, count in seen["counts"].items():
        assert count == status[f"trials_{name}"], name
    for (stage_name, state), count in seen["stage_cells"].items():
        assert count == status["stages"][stage_name].get(state, 0), (stage_name, state)
    assert seen["stage_cells"][("b", "failed")] == trials
    assert seen["health"].split()[0] in (status["pipeline"], seen["status_after"]["pipeline"])
    assert float(seen["funnel"]) == status["trials_total"]
    assert seen["phone_overflow"] <= 0
    assert seen["rows"] == trials and seen["total"] == str(trials)
    assert seen["passed_total"] == str(status["trials_passed"])
    assert seen["sorted"] == [f"s:{n}" for n in reversed(range(trials))]  # sharpe = x / 10
    assert "always_fail" not in seen["stages_before"] and "the data is wrong" in seen[
        "stages_before"]
    assert seen["charts"] == ["chart-drawdown", "chart-equity", "chart-folds", "chart-stress"]
    assert seen["refused"].startswith("retry refused (401): missing or wrong bearer token")
    assert seen["after_refusal"] == "failed"
    # the page showed stage b pending again (waited for above); the trail has the retry (a
    # daemon may run the retried stage again at once, so the status now is not checked)
    assert seen["retried"] and all("(was b: " in m for m in seen["retried"])
    assert "http.action" in seen["events"]
    assert [e["data"]["source"] for e in seen["event"]] == ["http"]
    assert seen["event"][0]["data"]["remote"] == "127.0.0.1"
    assert "no deployments" in seen["deployments"]
    shot = Path(SHOT or tmp_path / "dashboard.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
