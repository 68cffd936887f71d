"""The daemon's HTTP thread: stdlib ThreadingHTTPServer, its own read-only state-DB connection.

Serving never blocks the loop (another thread, another connection, WAL readers never wait for the
writer) and never writes. A non-loopback bind needs a bearer token, checked in constant time.
"""

from __future__ import annotations

import hmac
import os
import selectors
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pipeline_v2.addresses import TOKEN_ENV, is_loopback, parse_address
from pipeline_v2.config import Config
from pipeline_v2.http import routes
from pipeline_v2.http.metrics import PipelineCollector, registry_for
from pipeline_v2.logs import get_logger
from pipeline_v2.store import Store, observe

log = get_logger("http")
MAX_BODY = 64 * 1024  # an action's JSON body is a few bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    service: HttpService

    def serve_until(self, stop: int) -> None:
        """Serve until `stop` (a pipe's read end) is readable. Unlike `serve_forever`, which
        wakes every poll_interval to look at its shutdown flag, an idle server never wakes."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(stop, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if stop in ready:
                    return
                self.handle_request()  # a connection waits: accept it and hand it to a thread


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "pipeline_v2"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self._answer(self.server.service.handle("GET", self.path, self.headers,
                                                client=self.client_address[0]))

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_BODY)) if length > 0 else b""
        self._answer(self.server.service.handle("POST", self.path, self.headers, body,
                                                self.client_address[0]))

    def _answer(self, response: routes.Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("http_request", line=format % args)


class HttpService:
    """Serve the routes on `daemon.http` from a background thread until `stop()`."""

    def __init__(self, config: Callable[[], Config], address: str | None = None) -> None:
        self.config = config
        self.override = address  # `pipeline dashboard --port`: serve here, not daemon.http
        self.lock = threading.Lock()  # one read-only connection, one request at a time on it
        self.store: Store | None = None
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None
        self.stop_pipe: tuple[int, int] | None = None
        self.bound: tuple[str, int] | None = None
        self.error: str | None = None
        self.registry = registry_for(PipelineCollector(lambda: self._store(), self.config))

    @property
    def address(self) -> str | None:
        """The configured "host:port", or None when serving is off."""
        return self.override or self.config().daemon.http

    def start(self) -> bool:
        """Bind and serve; False (with `error` set) when the address cannot be used."""
        if self.address is None:
            return False
        host, port = parse_address(self.address)
        server_cls = _Server
        if ":" in host:
            server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        try:
            self.server = server_cls((host, port), _Handler, bind_and_activate=True)
        except OSError as exc:
            self.error = exc.strerror or str(exc)
            log.error("http_failed", address=self.address, error=self.error)
            return False
        self.server.service = self
        self.bound = (host, self.server.server_address[1])
        self.stop_pipe = os.pipe()
        self.thread = threading.Thread(target=self.server.serve_until, args=(self.stop_pipe[0],),
                                       name="pipeline-http", daemon=True)
        self.thread.start()
        log.info("http_listening", host=host, port=self.bound[1])
        return True

    def stop(self) -> bool:
        """Stop serving and close the connection; True when it was serving."""
        served = self.server is not None
        if self.stop_pipe is not None:
            os.write(self.stop_pipe[1], b"!")
        if self.thread is not None:
            self.thread.join(timeout=5)
            self.thread = None
        if self.server is not None:
            self.server.server_close()
            self.server = None
        if self.stop_pipe is not None:
            for fd in self.stop_pipe:
                os.close(fd)
            self.stop_pipe = None
        with self.lock:
            if self.store is not None:
                self.store.close()
                self.store = None
        return served

    def _store(self) -> Store:
        if self.store is None:
            self.store = observe.open_readonly(self.config().state_db_path)
        return self.store

    def _authorized(self, headers: Any) -> bool:
        daemon = self.config().daemon
        token = daemon.http_token or os.environ.get(TOKEN_ENV)
        if self.bound is not None and is_loopback(self.bound[0]) and not token:
            return True
        given = headers.get("Authorization", "")
        expected = f"Bearer {token}" if token else ""
        return bool(token) and hmac.compare_digest(given.encode(), expected.encode())

    def handle(self, method: str, target: str, headers: Any, body: bytes = b"",
               client: str = "") -> routes.Response:
        """Authorize, route and answer one request; never raises."""
        url = urlsplit(target)
        path = unquote(url.path.rstrip("/") or "/")
        public = (method == "GET" and routes.PUBLIC.fullmatch(path) is not None
                  and self.bound is not None and is_loopback(self.bound[0]))
        if not public and not self._authorized(headers):
            response = routes.error(401, "missing or wrong bearer token (Authorization: Bearer "
                                         "<daemon.http_token>)")
            response.headers["WWW-Authenticate"] = 'Bearer realm="pipeline"'
            return response
        found = routes.resolve(method, path)
        if isinstance(found, int):
            return routes.error(found, f"{method} {url.path}: " + (
                "not found" if found == 404 else "method not allowed"))
        handler, groups = found
        try:
            with self.lock:
                request = routes.Request(self._store(), self.config(), dict(parse_qsl(url.query)),
                                         groups, self.registry, headers=headers, body=body,
                                         client=client)
                return handler(request)
        except Exception as exc:  # a bad request must never take the thread down
            log.exception("http_error", path=url.path)
            with self.lock:
                if self.store is not None:  # reopen next time: the DB may have been replaced
                    self.store.close()
                    self.store = None
            return routes.error(500, f"{type(exc).__name__}: {exc}")
