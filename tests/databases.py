"""Throwaway PostgreSQL, MariaDB and SQLite databases for target environments."""

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

PG_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
MARIADB_ADMIN_URL = os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/mysql")


def require_services() -> bool:
    """Say whether a missing server fails the test instead of skipping it."""
    return os.environ.get("REQUIRE_SERVICES") == "1"


def _port_open(url: str) -> bool:
    u = make_url(url)
    try:
        with socket.create_connection((u.host or "127.0.0.1", u.port or 0), timeout=1):
            return True
    except OSError:
        return False


def need_server(admin_url: str, name: str) -> None:
    """Skip (or fail under REQUIRE_SERVICES=1) when the server is not answering."""
    if _port_open(admin_url):
        return
    where = make_url(admin_url).render_as_string(hide_password=True)
    message = f"{name} is not answering at {where}"
    if require_services():
        pytest.fail(f"{message} and REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(f"{message}; set REQUIRE_SERVICES=1 to make this a failure")


@contextmanager
def postgres_database() -> Iterator[str]:
    """Create an empty PostgreSQL database, yield its URL, then drop it."""
    need_server(PG_ADMIN_URL, "PostgreSQL")
    name = f"dash_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def mariadb_database() -> Iterator[str]:
    """Create an empty MariaDB database, yield its URL, then drop it."""
    need_server(MARIADB_ADMIN_URL, "MariaDB")
    name = f"dash_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(MARIADB_ADMIN_URL, poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    try:
        yield make_url(MARIADB_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()
