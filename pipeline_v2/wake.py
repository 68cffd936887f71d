"""Waking an idle daemon: a datagram socket next to the state DB (`<state_db>.wake`).

The daemon binds it and waits on it in its selector; a CLI command that committed a change
(pause, cancel, deploy, stop, ...) sends one byte, so the change takes effect at once without
the daemon polling the DB for it. Sending is best effort: no daemon, no socket, no harm — the
daemon also re-reads the controls every minute (every 5 s when it could not bind the socket).
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

# AF_UNIX paths are limited to 107 bytes (sun_path); a longer one has no socket.
MAX_PATH = 107


def wake_path(state_db: Path) -> Path:
    """The wake socket's path for a state DB."""
    return state_db.with_name(state_db.name + ".wake")


def wake_daemon(state_db: Path) -> None:
    """Send the daemon on this state DB one byte; silently nothing if none listens."""
    path = str(wake_path(state_db))
    if len(os.fsencode(path)) > MAX_PATH:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # nobody bound, or its queue is full: both fine
            sock.sendto(b"!", path)


class WakeSocket:
    """The daemon's end: bound while the daemon holds the state DB's lock."""

    def __init__(self, state_db: Path) -> None:
        self.path = wake_path(state_db)
        self.sock: socket.socket | None = None
        if len(os.fsencode(str(self.path))) > MAX_PATH:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # left by a daemon that died; we hold the lock now
            sock.bind(str(self.path))
        except OSError:
            sock.close()
            return
        self.sock = sock

    def drain(self) -> None:
        """Read every pending byte."""
        with contextlib.suppress(BlockingIOError, OSError):
            while self.sock is not None and self.sock.recv(512):
                pass

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
