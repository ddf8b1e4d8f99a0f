"""Helpers for the fault tests: Alembic processes, PostgreSQL backends, version tables, workers."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from django.contrib.auth.models import Group
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dashboard.models import Action
from dashboard.roles import ROLES
from tests.actions_support import ROOT, worker_argv, worker_env
from tests.databases import PG_ADMIN_URL, postgres_database

# PostgreSQL on 127.0.0.1 trusts every local user, so any password connects: it is there to be
# looked for in everything the dashboard writes.
TARGET_PASSWORD = "Pw-Secret-123"  # noqa: S105 (a marker, not a credential)


@pytest.fixture(scope="module", autouse=True)
def keep_roles(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Put back the role groups the flushes of transactional tests remove, for later tests."""
    yield
    with django_db_blocker.unblock():
        for role in ROLES:
            Group.objects.get_or_create(name=role)


@pytest.fixture
def target_databases() -> Iterator[Any]:
    """Return a function that creates n throwaway PostgreSQL databases and returns their URLs."""
    with ExitStack() as stack:

        def create(count: int) -> list[str]:
            urls = [stack.enter_context(postgres_database()) for _ in range(count)]
            return [
                make_url(url).set(password=TARGET_PASSWORD).render_as_string(hide_password=False)
                for url in urls
            ]

        yield create


def database_name(url: str) -> str:
    """Return the database name of url."""
    name = make_url(url).database
    assert name
    return name


def version_rows(url: str) -> list[str]:
    """Read the version table's rows directly, without the dashboard's reader."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return []
            return sorted(conn.scalars(sa.text("SELECT version_num FROM alembic_version")))
    finally:
        engine.dispose()


def _admin(sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(PG_ADMIN_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            result = conn.execute(sa.text(sql), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def backends_since(url: str, before: datetime) -> list[int]:
    """Return the pids of server backends on url's database that connected before `before`."""
    rows = _admin(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = :name AND backend_start < :before AND pid <> pg_backend_pid()",
        name=database_name(url),
        before=before,
    )
    return [row.pid for row in rows]


def terminate_backends(url: str) -> int:
    """Terminate every backend on url's database from another connection; return how many."""
    rows = _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = :name AND pid <> pg_backend_pid()",
        name=database_name(url),
    )
    return sum(1 for row in rows if row[0])


def drop_database(url: str) -> None:
    """Drop url's database, disconnecting whoever uses it."""
    _admin(f'DROP DATABASE "{database_name(url)}" WITH (FORCE)')


def alembic_processes(marker: str) -> list[int]:
    """Return the pids of live Python processes running Alembic for marker.

    The runner starts `python -c <bootstrap> ... -m alembic`, which then execs
    `python -m alembic`; marker (a database name, a config folder) is looked for in the
    command line and in the environment, where the runner puts the target's URL.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z" or "python" not in Path(argv[0].decode(errors="replace")).name:
                continue
            if not any(b"alembic" in arg for arg in argv):
                continue
            environ = (entry / "environ").read_bytes()
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours to read
        needle = marker.encode()
        if any(needle in arg for arg in argv) or needle in environ:
            found.append(int(entry.name))
    return found


def start_logged_worker(config: Path, log: Path, **extra: str) -> subprocess.Popen[str]:
    """Start a long-running `manage.py worker` (housekeeping included) logging to log."""
    with log.open("a", encoding="utf-8") as handle:
        return subprocess.Popen(
            worker_argv("worker", batch=False),
            cwd=ROOT,
            env=worker_env(config, **extra),
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )


def worker_pid(action: Action) -> int:
    """Return the process id of the worker that claimed action (recorded as host:pid)."""
    return int(action.worker.rsplit(":", 1)[1])
