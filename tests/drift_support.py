"""Helpers for the schema drift tests: configs with a scratch server, upgrades, hand-made drift."""

from __future__ import annotations

import argparse
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dashboard.databases import scratch
from tests.actions_support import SAMPLE_INI
from tests.databases import MARIADB_ADMIN_URL, PG_ADMIN_URL, mariadb_database, postgres_database

KINDS = ("sqlite", "postgres", "mariadb")
# The scratch server of each dialect's environments: the test servers' admin URLs.
SCRATCH = {"sqlite": None, "postgres": PG_ADMIN_URL, "mariadb": MARIADB_ADMIN_URL}


def write_drift_config(
    path: Path,
    environments: dict[str, dict[str, Any]],
    *,
    alembic_ini: Path = SAMPLE_INI,
    **project: Any,
) -> Path:
    """Write a dashboard config whose blog project carries the given keys (scratch_url, ...)."""
    lines = ["[projects.blog]", f"alembic_ini = {_toml(str(alembic_ini))}"]
    lines += [f"{key} = {_toml(value)}" for key, value in project.items() if value is not None]
    lines.append("")
    for name, values in environments.items():
        lines += [f"[environments.{name}]", 'project = "blog"']
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def migrate(
    url: str,
    target: str,
    *,
    script_location: Path = SAMPLE_INI.parent,
    version_table_schema: str | None = None,
) -> None:
    """Upgrade the database at url to target with Alembic in this process (fast, no ini logging)."""
    x = [f"url={url}"]
    if version_table_schema is not None:
        x.append(f"version_table_schema={version_table_schema}")
    config = Config(cmd_opts=argparse.Namespace(x=x))
    config.set_main_option("script_location", str(script_location))
    command.upgrade(config, target)


def sample_copy(
    folder: Path,
    *,
    url_from: str | None = None,
    models: Path | None = None,
    revision_sql: tuple[str, str] | None = None,
) -> Path:
    """Copy the sample project into folder, changed as asked; return its alembic.ini.

    url_from: env.py reads that variable before DATABASE_URL. models: env.py loads the models
    from that file (outside the migration files, as installed code is) and the copy has none.
    revision_sql: (revision, SQL) the revision's upgrade runs after its own DDL.
    """
    shutil.copytree(SAMPLE_INI.parent, folder, ignore=shutil.ignore_patterns("__pycache__"))
    env_py = folder / "env.py"
    text = env_py.read_text(encoding="utf-8")
    if url_from is not None:
        reading = 'x_args.get("url")\n        or os.environ.get("DATABASE_URL")'
        assert reading in text
        text = text.replace(
            reading,
            f'x_args.get("url")\n        or os.environ.get("{url_from}")'
            '\n        or os.environ.get("DATABASE_URL")',
        )
    if models is not None:
        beside = 'Path(__file__).resolve().with_name("models.py")'
        assert beside in text
        text = text.replace(beside, f"Path({str(models)!r})")
        shutil.copyfile(folder / "models.py", models)
        (folder / "models.py").unlink()
    env_py.write_text(text, encoding="utf-8")
    if revision_sql is not None:
        revision, sql = revision_sql
        [path] = (folder / "versions").glob(f"{revision}_*.py")
        code = path.read_text(encoding="utf-8")
        marker = '    if os.environ.get("MIGRATIONS_PROJECT_FAIL") == revision:'
        assert marker in code
        path.write_text(code.replace(marker, f"    op.execute({sql!r})\n{marker}", 1))
    return folder / "alembic.ini"


def execute(url: str, *statements: str) -> None:
    """Run statements one by one outside a transaction (DDL, CONCURRENTLY)."""
    engine = sa.create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def alter(url: str, change: Callable[[Operations], None]) -> None:
    """Apply an Alembic operation by hand (SQLite's batch mode recreates the table)."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            change(Operations(MigrationContext.configure(conn)))
    finally:
        engine.dispose()


def backend_of(url: str) -> str:
    """Return sqlite, postgres or mariadb: the test's name for the URL's kind."""
    return {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mariadb"}[
        scratch.backend_of(url)
    ]


def scratch_names(kind: str) -> list[str]:
    """Return the scratch databases on the test server of kind (PostgreSQL or MariaDB)."""
    engine = sa.create_engine(SCRATCH[kind] or "", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            if kind == "postgres":
                rows = conn.exec_driver_sql("SELECT datname FROM pg_database")
            else:
                rows = conn.exec_driver_sql("SHOW DATABASES")
            return sorted(str(r[0]) for r in rows if str(r[0]).startswith(scratch.PREFIX))
    finally:
        engine.dispose()


@contextmanager
def database_copy(kind: str, template: str, folder: Path, *, at: str) -> Iterator[str]:
    """Yield a fresh database holding what template (at revision at) holds."""
    if kind == "sqlite":
        target = folder / f"copy-{uuid.uuid4().hex[:8]}.db"
        shutil.copyfile(str(make_url(template).database), target)
        yield f"sqlite:///{target}"
        return
    if kind == "postgres":
        name = f"dash_test_{uuid.uuid4().hex[:12]}"
        source = make_url(template).database
        execute(PG_ADMIN_URL, f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        try:
            yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            execute(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    with mariadb_database() as url:
        migrate(url, at)  # MariaDB has no template databases; upgrading is quick enough
        yield url


@contextmanager
def empty_database(kind: str, folder: Path) -> Iterator[str]:
    """Yield the URL of a new empty database of kind."""
    if kind == "sqlite":
        path = folder / f"target-{uuid.uuid4().hex[:8]}.db"
        path.touch()
        yield f"sqlite:///{path}"
    elif kind == "postgres":
        with postgres_database() as url:
            yield url
    else:
        with mariadb_database() as url:
            yield url
