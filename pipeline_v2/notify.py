"""Deliver outbox events to a webhook (JSON POST, Slack-compatible `text`) and/or a command.

A background thread with its own DB connection, so a slow or down webhook never blocks the loop.
A POST is retried a few times at once with tenacity; an event still undelivered goes back to the
outbox with a growing delay, and is given up after `MAX_ATTEMPTS`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tenacity import retry, stop_after_attempt, wait_exponential

from pipeline_v2.config import Config
from pipeline_v2.logs import get_logger
from pipeline_v2.redact import redact
from pipeline_v2.store import Store
from pipeline_v2.templates import render_argv

MAX_ATTEMPTS = 8
BACKOFF = [5, 30, 120, 300, 900, 1800, 3600]
POST_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0
log = get_logger("notify")


def event_text(event: dict[str, Any]) -> str:
    """The one-line human message: `trial.failed my_study:12 — backtest: ValueError: ...`."""
    parts = [event["kind"]]
    if event.get("study") is not None:
        parts.append(f"{event['study']}:{event['trial_number']}")
    if event.get("stage"):
        parts.append(f"[{event['stage']}]")
    if event.get("message"):
        parts.append(f"- {event['message']}")
    return " ".join(parts)


def payload(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON body sent to the webhook and to the command's stdin (secrets masked)."""
    return redact({
        "text": event_text(event),
        "event": {k: event.get(k) for k in ("id", "ts", "kind", "stage", "old_status",
                                            "new_status", "message", "data")}
        | {"trial": None if event.get("study") is None
           else f"{event['study']}:{event['trial_number']}"},
    })


def post_webhook(
    url: str, body: dict[str, Any], sleep: Callable[[float], None] = time.sleep
) -> None:
    """POST JSON, retried 3 times with a short backoff; raises on the last failure."""

    @retry(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.5, max=4), sleep=sleep,
           reraise=True)
    def send() -> None:
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "pipeline_v2"},
        )
        with urllib.request.urlopen(request, timeout=POST_TIMEOUT_S) as response:
            response.read()

    send()


def run_command(argv: list[str], body: dict[str, Any]) -> None:
    """Run the notify command with the event JSON on stdin; raises on failure."""
    proc = subprocess.run(argv, input=json.dumps(body).encode(), capture_output=True,
                          timeout=COMMAND_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"notify command exited {proc.returncode}: {tail[0]}")


def deliver_due(store: Store, config: Config, now: float,
                sleep: Callable[[float], None] = time.sleep) -> int:
    """Deliver every due outbox entry once; returns how many were delivered."""
    delivered = 0
    for event in store.due_notifications(now):
        body = payload(event)
        try:
            if config.notify.webhook:
                post_webhook(config.notify.webhook, body, sleep)
            if config.notify.command:
                fields = {"event": event["kind"], "python": sys.executable}
                run_command(render_argv(config.notify.command, _Lenient(fields)), body)
        except (OSError, urllib.error.URLError, RuntimeError, subprocess.SubprocessError) as exc:
            attempts = event["attempts"] + 1
            retry_at = None
            if attempts < MAX_ATTEMPTS:
                retry_at = now + BACKOFF[min(attempts, len(BACKOFF)) - 1]
            error = redact(f"{type(exc).__name__}: {exc}")  # urllib errors quote the URL
            store.mark_notification(event["outbox_id"], now, error, retry_at)
            log.warning("notification_failed", event=event["kind"], attempts=attempts, error=error)
            continue
        store.mark_notification(event["outbox_id"], now, None, None)
        delivered += 1
    return delivered


class _Lenient(dict):  # type: ignore[type-arg]
    """Template fields for the notify command; unknown fields are left as written."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class Notifier(threading.Thread):
    """Background delivery, woken by the loop after every turn that queued events."""

    def __init__(self, config: Config) -> None:
        super().__init__(name="pipeline-notifier", daemon=True)
        self.config = config
        self.wakeup = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        """Deliver due outbox rows until stopped (the thread body)."""
        # The daemon checked the DB at its start: this second connection need not again.
        store = Store(self.config.state_db_path, notify_kinds=self.config.notify.events,
                      check="light")
        try:
            while True:
                try:
                    deliver_due(store, self.config, time.time(), sleep=self.stopping.wait)
                    due = store.next_notification_time()
                except Exception as exc:  # never let delivery kill the thread
                    log.error("notifier_error", error=repr(exc))
                    due = None
                if self.stopping.is_set():
                    return  # that was the last pass: what is left waits for the next daemon
                wait = 60.0 if due is None else max(0.0, due - time.time())
                self.wakeup.wait(min(wait, 60.0))
                self.wakeup.clear()
        finally:
            store.close()

    def stop(self) -> None:
        """Make one last delivery pass (no retry waits) and exit."""
        self.stopping.set()
        self.wakeup.set()
        self.join(timeout=10)
