"""Logs: JSON lines with rotation, `pipeline logs` (daemon and trial), --follow across rotation,
and one redaction function for logs, notifications and `config show`."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import structlog

from pipeline_v2 import logs
from pipeline_v2.notify import payload
from pipeline_v2.redact import redact
from tests.engine_helpers import FIX, ROOT, run, wait_for, workspace


@pytest.fixture
def configured_logs(tmp_path: Path):
    """Route structlog to tmp_path/logs for one test, then put the defaults back."""
    yield tmp_path / "logs"
    logs.configure(None, console=False)
    structlog.reset_defaults()


def test_daemon_log_rotates_by_size_and_logs_reads_across_files(
        configured_logs: Path, tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok"}})
    logs.configure(configured_logs, console=False, max_bytes=2048, backups=2)
    log = logs.get_logger("test")
    for i in range(100):
        log.info("tick", i=i, padding="x" * 40)
    files = sorted(p.name for p in configured_logs.iterdir())
    assert files == ["pipeline.jsonl", "pipeline.jsonl.1", "pipeline.jsonl.2"]
    for name in files:
        for line in (configured_logs / name).read_text().splitlines():
            assert json.loads(line)["event"] == "tick"  # whole lines, every one JSON
    result = invoke("logs", "--lines", "3", "--json", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["data"]["i"] for line in result.stdout.splitlines()] == [97, 98, 99]
    text = invoke("logs", "-n", "1", "--config", str(path)).stdout
    assert " daemon     info    tick " in text and "i=99" in text


def test_secrets_are_redacted_in_log_lines(configured_logs: Path) -> None:
    logs.configure(configured_logs, console=False)
    logs.get_logger("test").info("posted", http_token="s3cret-value", password="hunter2",
                                 url="https://hooks.example.com/in?token=abc&x=1", count=3)
    line = json.loads((configured_logs / "pipeline.jsonl").read_text())
    assert line["http_token"] == "***" and line["password"] == "***"
    assert line["url"] == "https://hooks.example.com/in?token=***&x=***"
    assert line["count"] == 3
    assert "s3cret" not in json.dumps(line) and "hunter2" not in json.dumps(line)


def test_redact_one_function_for_everything() -> None:
    assert redact({"webhook": "https://h.example/hook?key=k1", "api_key": "k2", "rank_by": "x",
                   "nested": [{"Authorization": "Bearer t"}], "storage":
                   "postgresql://me:pw@db.example/optuna", "secretNumber": 7}) == {
        "webhook": "https://h.example/hook?key=***", "api_key": "***", "rank_by": "x",
        "nested": [{"Authorization": "***"}], "storage": "postgresql://me:***@db.example/optuna",
        "secretNumber": "***"}
    assert redact({"webhook": "https://discord.com/api/webhooks/123/TOKEN"}) == {
        "webhook": "https://discord.com/api/***"}
    assert redact({"webhook": "https://h.example/"}) == {"webhook": "https://h.example/"}
    assert redact("failed: POST https://h.example/x?sig=abc timed out") == (
        "failed: POST https://h.example/x?sig=*** timed out")


SLACK = "https://hooks.slack.com/services/T0/B0/XYZSECRET"


def test_webhook_urls_keep_only_the_first_path_segment() -> None:
    assert redact({"webhook": SLACK}) == {"webhook": "https://hooks.slack.com/services/***"}
    # Known webhook hosts are masked wherever they appear, under any key or in free text.
    assert redact("POST https://discord.com/api/webhooks/123/TOKEN failed.") == (
        "POST https://discord.com/api/*** failed.")
    assert redact({"url": "https://acme.webhook.office.com/webhookb2/g@t/IncomingWebhook/k"}) == {
        "url": "https://acme.webhook.office.com/webhookb2/***"}
    # Other URLs outside a secret key keep their path; a one-segment webhook path stays.
    assert redact("see https://github.com/a/b/c") == "see https://github.com/a/b/c"
    assert redact({"webhook": "https://h.example/hook"}) == {"webhook": "https://h.example/hook"}


def test_a_slack_webhook_is_masked_in_config_show_and_log_lines(
        tmp_path: Path, invoke, configured_logs: Path) -> None:
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok"}}, notify={"webhook": SLACK})
    result = invoke("config", "show", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["notify"]["webhook"] == (
        "https://hooks.slack.com/services/***")
    assert "XYZSECRET" not in result.stdout
    logs.configure(configured_logs, console=False)
    logs.get_logger("test").warning("notification_failed", error=f"URLError: {SLACK} refused",
                                    target=SLACK)
    line = json.loads((configured_logs / "pipeline.jsonl").read_text())
    assert line["error"] == "URLError: https://hooks.slack.com/services/*** refused"
    assert line["target"] == "https://hooks.slack.com/services/***"


def test_notifications_and_config_show_are_redacted(tmp_path: Path, invoke) -> None:
    body = payload({"kind": "trial.failed", "message": "GET https://x.example/?token=abc: 500",
                    "data": {"password": "pw"}, "study": "s", "trial_number": 1})
    assert body["event"]["message"] == "GET https://x.example/?token=***: 500"
    assert body["event"]["data"] == {"password": "***"} and "abc" not in body["text"]
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok"}}, notify={
        "webhook": "https://hooks.slack.com/services/T0/B0/XYZSECRET?token=abc"})
    raw = json.loads(path.read_text())
    raw["daemon"]["http_token"] = "a-long-secret-token-value"
    path.write_text(json.dumps(raw))
    result = invoke("config", "show", "--config", str(path))
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["daemon"]["http_token"] == "***"
    # Slack (like Discord and Teams) puts its secret in the path: only the first segment shows.
    assert shown["notify"]["webhook"] == "https://hooks.slack.com/services/***?token=***"
    assert "abc" not in result.stdout and "a-long-secret" not in result.stdout
    assert "XYZSECRET" not in result.stdout


def test_trial_logs_interleave_events_and_stage_output(tmp_path: Path, invoke) -> None:
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok"}, "b": {"run": f"{FIX}:ok"}})
    assert run(path).idle
    result = invoke("logs", "s:0", "--json", "--config", str(path))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["ts"] for line in lines] == sorted(line["ts"] for line in lines)
    kinds = [(line["source"], (line.get("data") or {}).get("kind") or
              (line.get("data") or {}).get("event")) for line in lines]
    assert ("event", "trial.discovered") in kinds and ("a", "ran") in kinds
    assert ("b", "ran") in kinds and kinds.index(("a", "ran")) < kinds.index(("b", "ran"))
    only_b = invoke("logs", "s:0", "--stage", "b", "--json", "--config", str(path))
    sources = {json.loads(line)["source"] for line in only_b.stdout.splitlines()}
    assert sources == {"event", "b"}
    bad = invoke("logs", "--stage", "b", "--config", str(path))
    assert bad.exit_code == 2 and bad.stderr == "error: --stage needs a TRIAL\n"


def test_follow_keeps_printing_across_a_rotation(tmp_path: Path) -> None:
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok"}})
    log_file = tmp_path / "logs" / "pipeline.jsonl"
    log_file.parent.mkdir()
    handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=300, backupCount=1)
    writer = logging.getLogger("test-follow-writer")
    writer.addHandler(handler)
    writer.setLevel(logging.INFO)
    writer.propagate = False

    def emit(i: int) -> None:
        writer.info(json.dumps({"event": "line", "i": i, "timestamp": "2026-01-01T00:00:00Z",
                                "pad": "y" * 60}))

    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline_v2", "logs", "--follow", "--lines", "0", "--json",
         "--config", str(path)], stdout=subprocess.PIPE, env=dict(os.environ,
                                                               PYTHONPATH=str(ROOT)))
    seen: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [seen.put(json.loads(x)["data"]["i"]) for x in proc.stdout],
                     daemon=True).start()
    got: list[int] = []

    def drain_until(n: int) -> bool:
        while not seen.empty():
            got.append(seen.get())
        return len(got) >= n

    try:
        emit(0)  # the follower may not be reading yet: repeat until it prints something
        wait_for(lambda: drain_until(1) or (emit(0) is None and False), 20)
        for i in range(1, 8):  # ~130 bytes each at 300 per file: a rotation every other line
            emit(i)
            wait_for(lambda i=i: drain_until(1) and got[-1] == i, 20)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(10)
        proc.stdout.close()
        writer.removeHandler(handler)
        handler.close()
    assert [i for i in got if i != 0] == list(range(1, 8))
    assert (tmp_path / "logs" / "pipeline.jsonl.1").exists()
    assert code == 0


def test_trial_logs_include_the_trader_log(tmp_path: Path, invoke) -> None:
    chatty = str(ROOT / "tests" / "fixtures" / "chatty_trader.py")
    path = workspace(tmp_path, {
        "a": {"run": f"{FIX}:ok", "max_attempts": 1},
        "deploy": {"command": [sys.executable, chatty, "{run_dir}", "1.5"],
                   "rank_by": "a.sharpe", "max_deployments": 1, "evaluate_after": "1h",
                   "gates": {"sharpe": ">= 0.2"}}})
    assert run(path).idle
    result = invoke("logs", "s:0", "--stage", "deploy", "--config", str(path))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    trader = next(i for i, line in enumerate(lines) if " trader " in line)
    assert lines[trader].endswith(" trader     chatty trader starting")
    assert not lines[trader].startswith("-")  # timed by the deployment's start
    assert " event      " in lines[trader - 1] and "[deploy]" in lines[trader - 1]
    assert "event      stage.passed [deploy] paper trading gates passed" in lines[-1]


def test_follower_handles_rename_rotation_and_truncation(tmp_path: Path) -> None:
    from pipeline_v2.logview import Follower

    log = tmp_path / "x.log"
    log.write_text("old\n")
    follower = Follower([(log, "x")])  # starts at the end: "old" is history

    def texts() -> list[str]:
        return [line.text for line in follower.poll()]

    with log.open("a") as fh:
        fh.write("one\ntw")
    assert texts() == ["one"]  # a half-written line waits for its newline
    with log.open("a") as fh:
        fh.write("o\nlast of the old file\n")
    log.rename(tmp_path / "x.log.1")  # rotated away ...
    assert texts() == ["two", "last of the old file"]
    log.write_text("first of the new file\n")  # ... and a new file in its place
    assert texts() == ["first of the new file"]
    log.write_text("after truncation\n")  # same inode, shorter: truncated in place
    assert texts() == ["after truncation"]
    assert texts() == []
    follower.close()


def test_redact_keeps_sqlite_urls_with_an_empty_host_intact() -> None:
    # `config show` printed `sqlite:/optuna.db` for the demo's `sqlite:///optuna.db`, and an
    # absolute `sqlite:////abs/o.db` became `sqlite://abs/o.db` (host "abs").
    assert redact({"storage": "sqlite:///optuna.db"}) == {"storage": "sqlite:///optuna.db"}
    assert redact("cannot open sqlite:////abs/o.db") == "cannot open sqlite:////abs/o.db"
    assert redact("sqlite:///o.db?timeout=5") == "sqlite:///o.db?timeout=***"


def test_trial_logs_unknown_stage_is_a_usage_error(tmp_path: Path, invoke) -> None:
    # `pipeline logs 0 --stage nosuch` printed nothing and exited 0.
    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok"}})
    assert run(path).idle
    result = invoke("logs", "s:0", "--stage", "nosuch", "--config", str(path))
    assert result.exit_code == 2
    assert result.stderr == 'error: trial s:0 has no stage "nosuch" (stages: a)\n'


def _peak(fn):
    """What `fn` returns and the most memory Python held while it ran (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_trial_logs_stream_the_daemon_log(tmp_path: Path, invoke) -> None:
    """One trial's lines are picked out of a large daemon log without holding all of it."""
    from pipeline_v2 import logview
    from pipeline_v2.config import load_config
    from tests.engine_helpers import store_for

    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok"}})
    assert run(path).idle
    config, store = load_config(path), store_for(path)
    trial = store.find_trial("s:0")
    log = config.logs_path / logs.LOG_FILE
    other = json.dumps({"trial": "s:1", "trial_id": 99, "stage": "a", "event": "ran",
                        "padding": "x" * 150, "level": "info",
                        "timestamp": "2026-01-01T00:00:00Z"}) + "\n"
    with log.open("a") as fh:  # ~12 MB about another trial, then two lines about ours
        fh.write(other * 60_000)
        for i in range(2):
            fh.write(json.dumps({"trial": "s:0", "event": "mine", "i": i, "level": "info",
                                 "timestamp": "2099-01-01T00:00:01Z"}) + "\n")
    (events, _), peak = _peak(lambda: logview.trial_sources(store, config, "s:0", None, 50))
    mine = [line.data["i"] for line in events if line.data and line.data.get("event") == "mine"]
    assert mine == [0, 1]
    assert all(line.data.get("trial_id") in (None, trial.id) for line in events if line.data)
    assert peak < 2_000_000, f"{peak} bytes held to filter one trial"
    result = invoke("logs", "s:0", "--json", "--lines", "2", "--config", str(path))
    assert [json.loads(line)["data"].get("i") for line in result.stdout.splitlines()] == [0, 1]


def test_daemon_logs_read_the_last_lines_from_the_end(tmp_path: Path, invoke) -> None:
    """`pipeline logs -n N` reads N lines from the end, not the whole file (here 64 MB of a
    sparse hole before them), across a rotation boundary."""
    from pipeline_v2 import logview
    from pipeline_v2.config import load_config

    path = workspace(tmp_path, {"a": {"run": f"{FIX}:ok"}})
    config = load_config(path)
    config.logs_path.mkdir(parents=True, exist_ok=True)
    log = config.logs_path / logs.LOG_FILE
    older = config.logs_path / (logs.LOG_FILE + ".1")

    def line(i: int) -> str:
        return json.dumps({"event": "tick", "i": i, "level": "info",
                           "timestamp": f"2026-01-01T00:00:{i:02d}Z"}) + "\n"

    with older.open("w") as fh:
        fh.truncate(64 << 20)
        fh.seek(64 << 20)
        fh.write(line(1) + line(2))
    log.write_text(line(3) + "a plain line\n" + line(4))
    tail, peak = _peak(lambda: logview.tail_daemon(config, 4))
    assert [(t.data or {}).get("i", t.text) for t in tail] == [2, 3, "a plain line", 4]
    assert tail[2].ts == tail[1].ts  # a plain line takes the time of the line before it
    assert peak < 2_000_000, f"{peak} bytes held for 4 lines"
    result = invoke("logs", "-n", "2", "--json", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert [json.loads(x).get("text") or json.loads(x)["data"]["i"]
            for x in result.stdout.splitlines()] == ["a plain line", 4]
    assert logview.last_lines(log, 0) == [] and logview.last_lines(log, 9, block=7) == [
        line(3).strip(), "a plain line", line(4).strip()]
