"""sd_notify without a dependency: READY, WATCHDOG, STATUS, RELOADING, STOPPING."""

from __future__ import annotations

import os
import socket


def under_systemd() -> bool:
    """True when systemd listens for sd_notify messages (a message it would drop costs
    nothing to skip building)."""
    return bool(os.environ.get("NOTIFY_SOCKET"))


def sd_notify(message: str) -> bool:
    """Send one state line to systemd; False when not running under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec for this process, in seconds, or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
