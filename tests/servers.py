"""Real PostgreSQL and MariaDB servers for the storage contract suite.

The machine's own server when one answers on loopback (a fresh database per test session, dropped
after), else a throwaway one started from initdb / mariadb-install-db on a free port when those
binaries exist, else a skip that says why. Discovery reads through a role that has only SELECT.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

READER_PASSWORD = "s3cret-r0"  # tests check it never shows in errors, logs or status


@dataclass
class Server:
    """One database on a running server: a writer URL (owner) and a SELECT-only reader URL."""

    kind: str
    writer: str
    reader: str
    tables: list[str] = field(default_factory=list)
    admin: str = ""
    database: str = ""

    def reset(self) -> None:
        """Empty every Optuna table (the schema and the reader's grants stay)."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.writer)
        with engine.begin() as conn:
            if self.kind == "postgresql":
                names = ", ".join(self.tables)
                conn.execute(sa.text(f"TRUNCATE {names} CASCADE"))
            else:
                conn.execute(sa.text("SET FOREIGN_KEY_CHECKS = 0"))
                for name in self.tables:
                    conn.execute(sa.text(f"TRUNCATE TABLE {name}"))
                conn.execute(sa.text("SET FOREIGN_KEY_CHECKS = 1"))
        engine.dispose()


def _answers(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not _answers(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"server on port {port} did not start")
        time.sleep(0.1)


def _create_optuna_schema(writer: str) -> list[str]:
    """Let Optuna create its tables (as the owner), and list them."""
    import optuna
    import sqlalchemy as sa

    storage = optuna.storages.RDBStorage(writer)
    storage.engine.dispose()
    engine = sa.create_engine(writer)
    names = [t for t in sa.inspect(engine).get_table_names() if t != "alembic_version"]
    engine.dispose()
    return names


@contextlib.contextmanager
def _postgres_server(tmp: Path) -> Iterator[tuple[str, str]]:
    """(admin URL, reason) of a loopback PostgreSQL: the machine's, else a throwaway one."""
    if _answers(5432):
        yield "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", ""
        return
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        yield "", "no PostgreSQL answers on 127.0.0.1:5432 and initdb/pg_ctl are not installed"
        return
    data, port = tmp / "pgdata", _free_port()
    # initdb refuses to run as root: run the throwaway server as the postgres user then.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    tmp.mkdir(parents=True, exist_ok=True)
    if prefix:
        shutil.chown(tmp, "postgres")
    subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-w", "-l", str(tmp / "pg.log"), "-o",
                    f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        _wait_for(port)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres", ""
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)


@contextlib.contextmanager
def _mariadb_server(tmp: Path) -> Iterator[tuple[str, str]]:
    """(admin URL, reason) of a loopback MariaDB/MySQL: the machine's, else a throwaway one."""
    if _answers(3306):
        yield "mysql+pymysql://root@127.0.0.1:3306/", ""
        return
    install, server = shutil.which("mariadb-install-db"), shutil.which("mariadbd")
    if not (install and server):
        yield "", ("no MySQL/MariaDB answers on 127.0.0.1:3306 and "
                   "mariadb-install-db/mariadbd are not installed")
        return
    data, port = tmp / "mydata", _free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    user = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run([install, f"--datadir={data}", "--auth-root-authentication-method=normal",
                    *user], check=True, capture_output=True)
    proc = subprocess.Popen([server, f"--datadir={data}", f"--port={port}",
                             "--bind-address=127.0.0.1", f"--socket={tmp / 'my.sock'}",
                             "--skip-log-bin", *user],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(port)
        yield f"mysql+pymysql://root@127.0.0.1:{port}/", ""
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def server_database(kind: str, tmp: Path) -> Iterator[Server | str]:
    """A fresh database with Optuna's schema and a SELECT-only reader, or why there is none."""
    import sqlalchemy as sa

    try:
        importlib.import_module("psycopg2" if kind == "postgresql" else "pymysql")
    except ImportError:
        extra = "postgres" if kind == "postgresql" else "mysql"
        yield f"the {kind} driver is not installed (pip install 'pipeline_v2[{extra}]')"
        return
    starter = _postgres_server if kind == "postgresql" else _mariadb_server
    tag = uuid.uuid4().hex[:8]
    name, reader_role = f"pv2_test_{tag}", f"pv2_ro_{tag}"
    with starter(tmp / kind) as (admin, reason):
        if not admin:
            yield reason
            return
        engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
        host_port = admin.split("@", 1)[1].rsplit("/", 1)[0]
        with engine.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
            if kind == "postgresql":
                conn.execute(sa.text(
                    f"CREATE ROLE {reader_role} LOGIN PASSWORD '{READER_PASSWORD}'"))
            else:
                conn.execute(sa.text(
                    f"CREATE USER '{reader_role}'@'%' IDENTIFIED BY '{READER_PASSWORD}'"))
        writer = admin.rsplit("/", 1)[0] + f"/{name}"
        tables = _create_optuna_schema(writer)
        owner = sa.create_engine(writer, isolation_level="AUTOCOMMIT")
        with owner.connect() as conn:
            if kind == "postgresql":
                conn.execute(sa.text(f"GRANT CONNECT ON DATABASE {name} TO {reader_role}"))
                conn.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {reader_role}"))
                conn.execute(sa.text(
                    f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader_role}"))
            else:
                conn.execute(sa.text(f"GRANT SELECT ON {name}.* TO '{reader_role}'@'%'"))
        owner.dispose()
        dialect = "postgresql" if kind == "postgresql" else "mysql"
        reader = f"{dialect}://{reader_role}:{READER_PASSWORD}@{host_port}/{name}"
        try:
            yield Server(kind, writer, reader, tables, admin, name)
        finally:
            with engine.connect() as conn:
                if kind == "postgresql":
                    conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    conn.execute(sa.text(f"DROP ROLE IF EXISTS {reader_role}"))
                else:
                    conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
                    conn.execute(sa.text(f"DROP USER IF EXISTS '{reader_role}'@'%'"))
            engine.dispose()
