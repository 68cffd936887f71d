"""A second store opened in a process that already holds the state DB must not drop that
process's SQLite locks (POSIX locks belong to the process: closing any other descriptor of the
file releases them all), or another process closing its connection deletes the live WAL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline_v2.store import Store


def test_opening_a_second_store_keeps_the_first_ones_locks(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    daemon = Store(db)  # the daemon's connection (WAL): holds a shared lock while open
    daemon.set_setting("probe", "1")
    reader = Store(db, check="light")  # e.g. the HTTP thread's store, opened later
    reader.close()
    # Another process (a CLI) opens and closes the DB: with our locks gone it would believe it
    # is the last connection, checkpoint and delete the WAL under the daemon.
    subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
                    " c.execute('select count(*) from sqlite_master').fetchall(); c.close()",
                    str(db)], check=True)
    assert (tmp_path / "state.db-wal").exists()
    daemon.set_setting("probe", "2")
    assert daemon.get_setting("probe") == "2"
    daemon.close()
