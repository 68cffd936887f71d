"""Classifying faults the daemon lives through: a full disk, a busy or broken SQLite file."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

PROBE_BYTES = 64 * 1024


def is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC (or SQLite's "disk is full") anywhere in the exception's chain."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def is_corrupt(exc: BaseException) -> bool:
    """SQLite found a malformed page: writing on could only make it worse."""
    return isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in str(exc) or "not a database" in str(exc))


def probe_space(folder: Path) -> None:
    """Write (and remove) a small file in `folder`; raises OSError while the disk is full."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".space-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        probe.unlink(missing_ok=True)


def describe(exc: BaseException) -> str:
    """`OSError: [Errno 28] No space left on device`."""
    return f"{type(exc).__name__}: {exc}".rstrip(": ")
