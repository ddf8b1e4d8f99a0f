"""Shared fixtures: throwaway target databases of every kind we support."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import mariadb_database, postgres_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """Return the URL of a fresh SQLite file."""
    return f"sqlite:///{tmp_path / 'target.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """Yield the URL of a throwaway PostgreSQL database."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """Yield the URL of a throwaway MariaDB database."""
    with mariadb_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def any_url(request: pytest.FixtureRequest) -> str:
    """Yield a throwaway database URL of each supported kind in turn."""
    fixture = {"sqlite": "sqlite_url", "postgres": "postgres_url", "mariadb": "mariadb_url"}
    return request.getfixturevalue(fixture[request.param])
