"""Notifications from the outbox: a real webhook on loopback, a down one, and a command."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.engine_helpers import FIX, run, store_for, workspace

FAILING = {"a": {"run": f"{FIX}:always_fail", "max_attempts": 1}}


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def test_failed_trial_is_posted_slack_style(tmp_path: Path, webhook) -> None:
    url, received = webhook
    path = workspace(tmp_path, FAILING, notify={"webhook": url})
    run(path)
    assert [r["event"]["kind"] for r in received] == ["trial.failed"]
    assert received[0]["text"] == "trial.failed s:0 - a: ValueError: the data is wrong"
    assert received[0]["event"]["trial"] == "s:0"
    outbox = store_for(path).db.execute("SELECT status, attempts FROM outbox").fetchall()
    assert [tuple(r) for r in outbox] == [("delivered", 1)]


def test_a_down_webhook_never_blocks_the_loop(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connection refused
        path = workspace(tmp_path, FAILING, notify={"webhook": f"http://127.0.0.1:{port}/"})
        summary = run(path, timeout=20)
    assert summary.idle
    row = store_for(path).db.execute(
        "SELECT status, attempts, last_error, next_attempt_at FROM outbox").fetchone()
    assert row["status"] == "pending" and row["attempts"] == 1
    assert "Connection refused" in row["last_error"]


def test_a_failing_slack_webhook_error_is_stored_without_its_secret(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    from pipeline_v2 import notify

    slack = "https://hooks.slack.com/services/T0/B0/XYZSECRET"

    def refuse(url: str, *_args: object) -> None:  # the network beyond this machine
        raise urllib.error.URLError(f"cannot reach {url}")

    monkeypatch.setattr(notify, "post_webhook", refuse)
    path = workspace(tmp_path, FAILING, notify={"webhook": slack})
    assert run(path, timeout=20).idle
    row = store_for(path).db.execute("SELECT last_error FROM outbox").fetchone()
    assert row["last_error"] == (
        "URLError: <urlopen error cannot reach https://hooks.slack.com/services/***>")


def test_notify_command_gets_the_event_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    script = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')"
    path = workspace(tmp_path, FAILING,
                     notify={"command": [sys.executable, "-c", script, str(out)]})
    run(path)
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["event"]["kind"] for e in events] == ["trial.failed"]


def test_no_outbox_without_a_destination(tmp_path: Path) -> None:
    path = workspace(tmp_path, FAILING)
    run(path)
    assert store_for(path).db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


def test_until_idle_waits_for_the_outbox(tmp_path: Path) -> None:
    received: list[dict] = []

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            time.sleep(0.08)  # slower than the pipeline: the outbox is still full at idle
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        path = workspace(tmp_path, FAILING, trials=25, notify={"webhook": url})
        assert run(path).idle
    finally:
        server.shutdown()
        server.server_close()
    assert len(received) == 25
    outbox = store_for(path).db.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status")
    assert [tuple(r) for r in outbox.fetchall()] == [("delivered", 25)]
