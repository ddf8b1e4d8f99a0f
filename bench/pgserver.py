"""The PostgreSQL server the benchmarks make their throwaway databases on."""

from __future__ import annotations

import os

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


def database_url(name: str) -> str:
    """Return the URL of one bench database on the admin server."""
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def admin_engine() -> sa.Engine:
    """Return an engine on the admin database that runs DDL outside transactions."""
    return sa.create_engine(ADMIN_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")


def drop_databases(admin: sa.Engine, prefix: str) -> int:
    """Drop every database whose name starts with prefix (also left over from an earlier run)."""
    with admin.connect() as conn:
        names = list(
            conn.execute(
                sa.text("SELECT datname FROM pg_database WHERE datname LIKE :pattern"),
                {"pattern": prefix.replace("_", r"\_") + "%"},
            ).scalars()
        )
        for name in names:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return len(names)
