"""Helpers for the run lock and lock retry tests: holders, blockers, readers, CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dashboard.databases import runlock

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_INI = ROOT / "migrations_project" / "alembic.ini"
HOLDER_APPLICATION = "lock test holder"


def connect(url: str, application: str = HOLDER_APPLICATION) -> sa.Connection:
    """Open one unpooled connection outside any transaction, named application on PostgreSQL."""
    args = {"application_name": application} if url.startswith("postgresql") else {}
    engine = sa.create_engine(url, poolclass=NullPool, connect_args=args)
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def backend_id(conn: sa.Connection) -> int:
    """Return the server's id of the connection: its pid or connection id."""
    if conn.dialect.name == "postgresql":
        return int(conn.scalar(sa.text("SELECT pg_backend_pid()")))
    return int(conn.scalar(sa.text("SELECT CONNECTION_ID()")))


@contextmanager
def run_lock_held(url: str, table: str = "alembic_version") -> Iterator[int]:
    """Hold the run lock of url's version table on a connection of our own; yield its id."""
    conn = connect(url)
    try:
        if conn.dialect.name == "postgresql":
            key = runlock.postgresql_key("public", table)
            assert conn.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
        else:
            name = runlock.mysql_name(str(make_url(url).database), table)
            assert conn.scalar(sa.text("SELECT GET_LOCK(:n, 0)"), {"n": name}) == 1
        yield backend_id(conn)
    finally:
        conn.close()
        conn.engine.dispose()


@contextmanager
def table_blocked(url: str, table: str = "posts") -> Iterator[Blocker]:
    """Open a transaction that read table and stays idle in it (ACCESS SHARE held)."""
    blocker = Blocker(url, table)
    try:
        yield blocker
    finally:
        blocker.release()


class Blocker:
    """A session idle in a transaction that read one table: any ALTER of it must wait."""

    def __init__(self, url: str, table: str) -> None:
        self.conn = connect(url, "lock test blocker")
        self.pid = backend_id(self.conn)
        self.conn.exec_driver_sql("BEGIN")
        self.conn.exec_driver_sql(f"SELECT 1 FROM {table} LIMIT 1")  # noqa: S608 (our own name)
        self.released = False

    def release(self) -> None:
        """End the transaction and the session."""
        if self.released:
            return
        self.released = True
        try:
            self.conn.exec_driver_sql("ROLLBACK")
        finally:
            self.conn.close()
            self.conn.engine.dispose()


class Reader(threading.Thread):
    """Count a table's rows in a loop on a connection of its own; remember the slowest count."""

    def __init__(self, url: str, table: str = "posts", *, pause: float = 0.05) -> None:
        super().__init__(name="lock-test-reader", daemon=True)
        self.url = url
        self.table = table
        self.pause = pause
        self.slowest = 0.0
        self.counts = 0
        self.errors: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        conn = connect(self.url, "lock test reader")
        try:
            while not self._done.is_set():
                started = time.monotonic()
                try:
                    conn.exec_driver_sql(f"SELECT count(*) FROM {self.table}").scalar()  # noqa: S608
                except sa.exc.DBAPIError as exc:
                    self.errors.append(str(exc.orig))
                    return
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.counts += 1
                self._done.wait(self.pause)
        finally:
            conn.close()
            conn.engine.dispose()

    def stop(self) -> float:
        """Stop the loop and return the slowest count's seconds."""
        self._done.set()
        self.join(timeout=60)
        return self.slowest


def alembic_argv(*args: str) -> list[str]:
    """Return the command line of the sample project's Alembic."""
    return [sys.executable, "-m", "alembic", "-c", str(SAMPLE_INI), *args]


def alembic_env(url: str, **extra: str) -> dict[str, str]:
    """Return the environment of a command-line Alembic run against url."""
    env = {**os.environ, "DATABASE_URL": url, **extra}
    for name in ("MIGRATIONS_PROJECT_SLEEP", "MIGRATIONS_PROJECT_FAIL", runlock.HELD_VARIABLE):
        if name not in extra:
            env.pop(name, None)
    return env


def start_cli(url: str, *args: str, **extra: str) -> subprocess.Popen[str]:
    """Start `alembic <args>` of the sample project against url, output captured."""
    return subprocess.Popen(
        alembic_argv(*args),
        cwd=ROOT,
        env=alembic_env(url, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_cli(url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run `alembic <args>` of the sample project against url and return how it ended."""
    return subprocess.run(
        alembic_argv(*args),
        cwd=ROOT,
        env=alembic_env(url, **extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ran_steps(output: str) -> list[str]:
    """Return the revisions an Alembic output says it upgraded to, in order."""
    found = []
    for line in output.splitlines():
        if "Running upgrade" in line:
            found.append(line.rsplit("-> ", 1)[1].split(",", 1)[0].strip())
    return found
