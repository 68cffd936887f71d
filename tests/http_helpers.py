"""Run a real daemon in this process and talk to its HTTP server from a client thread."""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline_v2.config import load_config
from pipeline_v2.daemon import Daemon
from pipeline_v2.store import observe
from tests.engine_helpers import wait_for

TOKEN = "t0ken-that-is-long-enough"


def bound_port(path: Path) -> int:
    """The port the daemon's HTTP server bound (port 0 picks a free one), from the health table."""
    db = load_config(path).state_db_path
    found: dict[str, int] = {}

    def ready() -> bool:
        if not db.exists():
            return False
        store = observe.open_readonly(db)
        try:
            http = store.health().get("http")
        except Exception:
            return False
        finally:
            store.close()
        if http and (http["details"] or {}).get("port"):
            found["port"] = http["details"]["port"]
            return True
        return False

    wait_for(ready, 20)
    return found["port"]


def get(url: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    """GET a URL; (status, body, headers) whatever the status."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def get_json(url: str, token: str | None = None) -> tuple[int, Any]:
    status, body, _ = get(url, token)
    return status, json.loads(body)


def with_daemon(path: Path, client: Callable[[str], None], host: str = "127.0.0.1",
                timeout: float = 30) -> None:
    """Run the daemon here until `client(base_url)` returns in its thread, then SIGTERM it."""
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            client(f"http://{host}:{bound_port(path)}")
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    Daemon(path, mode="forever", timeout=timeout).run()
    thread.join(5)
    if errors:
        raise errors[0]
