"""The dashboard's own database under trouble: reads go on, /healthz says it cannot write."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from django.core.management import call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.test import Client
from django.utils import timezone
from sqlalchemy.pool import NullPool

from dashboard.models import ApiToken
from dashboard.services import tokens
from tests.actions_support import dashboard_url, write_config

pytestmark = pytest.mark.django_db
# Far below the 20 s a locked SQLite database made every bearer-token read wait, then fail.
QUICK = 2.0


@pytest.fixture
def key(settings: Any, tmp_path: Path) -> str:
    """Return the key of a viewer's API token, with one environment configured."""
    url = f"sqlite:///{tmp_path / 'staging.db'}"
    settings.DASHBOARD_CONFIG = str(write_config(tmp_path / "d.toml", {"staging": {"url": url}}))
    call_command("adduser", "ci", role="viewer", password="correct-horse-9")
    return tokens.token_create(username="ci", name="pipeline")


def _api(key: str) -> tuple[int, float]:
    started = time.monotonic()
    response = Client().get("/api/environments", HTTP_AUTHORIZATION=f"Bearer {key}")
    return response.status_code, time.monotonic() - started


def _health(path: str = "/healthz") -> tuple[Any, float]:
    started = time.monotonic()
    response = Client().get(path)
    return response, time.monotonic() - started


def test_token_use_is_recorded_at_most_once_a_minute(key: str) -> None:
    token = ApiToken.objects.get()
    assert token.last_used_at is None
    assert _api(key)[0] == 200
    first = ApiToken.objects.get().last_used_at
    assert first is not None
    assert _api(key)[0] == 200
    assert ApiToken.objects.get().last_used_at == first  # used again within the minute

    ApiToken.objects.update(last_used_at=timezone.now() - timedelta(seconds=61))
    assert _api(key)[0] == 200
    assert ApiToken.objects.get().last_used_at > timezone.now() - timedelta(seconds=5)


def test_healthz_says_the_database_is_readable_and_writable() -> None:
    response, _ = _health()
    assert response.status_code == 200
    assert response.json()["database"] == {"readable": True, "writable": True}


def test_the_write_probe_leaves_the_table_it_touches_as_it_was() -> None:
    before = list(MigrationRecorder.Migration.objects.order_by("pk").values_list())
    for _ in range(3):
        assert _health()[0].json()["database"]["writable"] is True
    assert list(MigrationRecorder.Migration.objects.order_by("pk").values_list()) == before


# --- a real lock held by another connection -----------------------------------------------


@contextmanager
def _sqlite_write_lock() -> Iterator[None]:
    """Hold the write lock on the test's SQLite database from a second connection."""
    other = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


@contextmanager
def _postgres_row_locks(*rows: tuple[str, str]) -> Iterator[None]:
    """Lock rows (table, WHERE clause) of the test's PostgreSQL database from a second connection."""
    url = sa.make_url(dashboard_url()).set(drivername="postgresql+psycopg2")
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as other, other.begin() as held:
            for table, where in rows:
                other.execute(sa.text(f'SELECT 1 FROM "{table}" WHERE {where} FOR UPDATE'))  # noqa: S608
            yield
            held.rollback()
    finally:
        engine.dispose()


def _lock_everything() -> Any:
    """Lock what token use and the write probe write: the whole file, or their rows."""
    if connection.vendor == "sqlite":
        return _sqlite_write_lock()
    if connection.vendor == "postgresql":
        migrations = MigrationRecorder.Migration._meta.db_table
        return _postgres_row_locks(
            (ApiToken._meta.db_table, "true"),
            (migrations, f'id = (SELECT min(id) FROM "{migrations}")'),  # noqa: S608
        )
    pytest.skip(f"no lock to hold on a {connection.vendor} dashboard database")


@pytest.mark.django_db(transaction=True)
def test_api_reads_answer_quickly_and_healthz_says_so_while_the_database_is_locked(
    key: str,
) -> None:
    with _lock_everything():
        status, took = _api(key)
        assert (status, took < QUICK) == (200, True), f"{status} after {took:.1f} s"
        health, health_took = _health()
        assert health.status_code == 200 and health_took < QUICK, health_took
        assert health.json()["database"] == {"readable": True, "writable": False}
        assert "cannot be written" in " ".join(health.json()["problems"])
        ready, ready_took = _health("/readyz")
        assert ready.status_code == 503 and ready_took < QUICK
        assert ready.json()["database"]["writable"] is False
    # The use it could not record is recorded by the next read.
    assert ApiToken.objects.get().last_used_at is None
    assert _api(key)[0] == 200
    assert ApiToken.objects.get().last_used_at is not None
    assert _health()[0].json()["database"]["writable"] is True
