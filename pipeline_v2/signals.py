"""The daemon's signal handling: handlers only set flags and write to a wakeup fd."""

from __future__ import annotations

import selectors
import signal
import socket
from typing import Any


class SignalsMixin:
    """SIGTERM/SIGINT count stop requests, SIGHUP asks for a reload; the loop acts on them."""

    selector: selectors.BaseSelector
    stop_requests: int
    reload_requested: bool

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stop_requests += 1

    def _install_signals(self) -> dict[int, Any]:
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeup)
        previous = {s: signal.signal(s, self._on_signal)
                    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        previous[-1] = signal.set_wakeup_fd(self._wake_w.fileno())
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        self._wake_r.close()
        self._wake_w.close()

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

