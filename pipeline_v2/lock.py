"""One daemon per state DB: an flock on `<state_db>.lock` that also names the holder's pid."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pipeline_v2.errors import LockedError


def lock_path(state_db: Path) -> Path:
    """The lock file next to the state DB."""
    return state_db.with_name(state_db.name + ".lock")


def daemon_pid(state_db: Path) -> int | None:
    """The pid of the daemon holding the lock, or None when no daemon runs."""
    path = lock_path(state_db)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.read(fd, 64).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)
    return None


class DaemonLock:
    """One daemon per state DB: an flock on `<state_db>.lock` holding the owner's pid."""

    def __init__(self, state_db: Path) -> None:
        self.path = lock_path(state_db)
        self.fd: int | None = None

    def __enter__(self) -> DaemonLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(
                f"{self.path}: another daemon (pid {holder}) is running on this state DB; "
                "stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
