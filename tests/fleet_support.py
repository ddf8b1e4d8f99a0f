"""Throwaway PostgreSQL tenants for fleet tests and the fleet benchmark, copied from templates.

A template database is brought to a revision once with the sample project's Alembic; each
tenant is then a `CREATE DATABASE ... TEMPLATE` copy (tens of milliseconds), so hundreds of
tenants at mixed revisions take seconds. Everything is named with one prefix and dropped by it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.databases import PG_ADMIN_URL
from tests.statusenv import alembic

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_INI = ROOT / "migrations_project" / "alembic.ini"
BASE = "base"
COPIES_AT_ONCE = 4


class Tenants:
    """PostgreSQL databases named prefix + name on the admin server; drop() removes them all."""

    def __init__(self, prefix: str, admin_url: str = PG_ADMIN_URL) -> None:
        self.prefix = prefix
        self.admin_url = admin_url
        self.admin = sa.create_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        self._templates: dict[str, str] = {}

    def database(self, name: str) -> str:
        """Return the database name of tenant name."""
        return f"{self.prefix}{name}"

    def url(self, name: str) -> str:
        """Return the URL (psycopg2, the admin's user) of tenant name."""
        return (
            make_url(self.admin_url)
            .set(database=self.database(name))
            .render_as_string(hide_password=False)
        )

    def url_template(self) -> str:
        """Return a fleet url_template whose {name} is a tenant's name."""
        parsed = make_url(self.admin_url).set(drivername="postgresql", database="DATABASE")
        rendered = parsed.render_as_string(hide_password=False)
        return rendered.replace("DATABASE", self.database("{name}"))

    def template(self, revision: str = BASE) -> str:
        """Return the template database at revision, made with Alembic on first use."""
        if revision not in self._templates:
            name = f"template_{revision}"
            self._create(self.database(name))
            if revision != BASE:
                alembic(self.url(name), "upgrade", revision)
            self._templates[revision] = name
        return self._templates[revision]

    def create(self, names: Iterable[str], revision: str = BASE) -> list[str]:
        """Create these tenants as copies of the template at revision; return their names."""
        source = self.database(self.template(revision))
        made = list(names)

        def copy(batch: list[str]) -> None:
            with self.admin.connect() as conn:
                for name in batch:
                    conn.execute(
                        sa.text(f'CREATE DATABASE "{self.database(name)}" TEMPLATE "{source}"')
                    )

        # A few copies at once take about a third of the time of one after another.
        batches = [made[n::COPIES_AT_ONCE] for n in range(COPIES_AT_ONCE)]
        with ThreadPoolExecutor(max_workers=COPIES_AT_ONCE) as pool:
            list(pool.map(copy, [batch for batch in batches if batch]))
        return made

    def execute(self, name: str, sql: str) -> None:
        """Run one statement in tenant name (to break it on purpose, say)."""
        engine = sa.create_engine(self.url(name), poolclass=NullPool)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(sql))
        finally:
            engine.dispose()

    def existing(self) -> list[str]:
        """Return the names of the databases with this prefix on the server."""
        with self.admin.connect() as conn:
            return list(
                conn.execute(
                    sa.text("SELECT datname FROM pg_database WHERE datname LIKE :pattern"),
                    {"pattern": self.prefix.replace("_", r"\_") + "%"},
                ).scalars()
            )

    def drop(self) -> int:
        """Drop every database with this prefix (leftovers of an earlier run too); say how many.

        Each drop costs PostgreSQL a checkpoint, one after another: 200 take 10-30 s here.
        """
        names = self.existing()
        with self.admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self._templates.clear()
        return len(names)

    def _create(self, database: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{database}"'))


@contextmanager
def tenant_databases(prefix: str | None = None) -> Iterator[Tenants]:
    """Yield Tenants under a fresh prefix (or the one given), and drop them all afterwards."""
    tenants = Tenants(prefix or f"fleet_{uuid.uuid4().hex[:8]}_")
    try:
        yield tenants
    finally:
        try:
            tenants.drop()
        finally:
            tenants.admin.dispose()


def fleet_config(
    path: Path,
    *,
    fleet: str,
    url_template: str,
    names: Sequence[str],
    alembic_ini: Path = SAMPLE_INI,
    **settings: Any,
) -> Path:
    """Write a dashboard config with the blog project and one fleet of these members."""
    lines = [
        "[projects.blog]",
        f"alembic_ini = {json.dumps(str(alembic_ini))}",
        "",
        f"[fleets.{fleet}]",
        'project = "blog"',
        f"url_template = {json.dumps(url_template)}",
        f"names = {json.dumps(list(names))}",
    ]
    # JSON strings, numbers and lists of them are TOML values too.
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def most_at_once(spans: Iterable[tuple[datetime, datetime]]) -> int:
    """Return the largest number of spans (start, end) open at one instant; touching is not open."""
    events = []
    for start, end in spans:
        events += [(start, 1), (end, -1)]
    # At one instant an end sorts before a start: a member that starts as another ends replaces it.
    events.sort(key=lambda event: (event[0], event[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most
