"""Shared fixtures: throwaway target databases of every kind we support."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group

from dashboard.roles import ROLES
from tests.actions_support import make_people
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


@pytest.fixture(scope="module")
def keep_roles(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Put back the role groups a module's transactional flushes remove, for the modules after."""
    yield
    with django_db_blocker.unblock():
        for role in ROLES:
            Group.objects.get_or_create(name=role)


@pytest.fixture
def people() -> dict[str, Any]:
    """Create the test people (tests.actions_support.PEOPLE) with their roles."""
    return make_people()
