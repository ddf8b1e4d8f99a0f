"""Run the blog project's revisions online or offline against one database.

The URL comes from `-x url=...`, else the DATABASE_URL environment variable, else
`sqlalchemy.url` in alembic.ini. The version table comes from `-x version_table=...`
or the ini's `version_table` / `version_table_schema` (default: alembic_version).

Two environment variables exist only so tests can watch a run from outside:
MIGRATIONS_PROJECT_SLEEP  seconds every revision's upgrade()/downgrade() sleeps before its DDL;
MIGRATIONS_PROJECT_FAIL   a revision id whose upgrade()/downgrade() raises RuntimeError after
                          its DDL (PostgreSQL then rolls the run back; SQLite and MariaDB keep it).
"""

import importlib.util
import os
import sys
from logging.config import fileConfig
from pathlib import Path

import sqlalchemy as sa
from alembic import context
from alembic.util import CommandError
from sqlalchemy.pool import NullPool

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name)

MODELS_MODULE = "migrations_project_models"


def load_target_metadata() -> sa.MetaData:
    """Import models.py beside this file by path, whatever the cwd and sys.path."""
    if MODELS_MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            MODELS_MODULE, Path(__file__).resolve().with_name("models.py")
        )
        if spec is None or spec.loader is None:
            raise CommandError(f"cannot load models.py beside {__file__}")
        module = importlib.util.module_from_spec(spec)
        # Declarative classes resolve their Mapped[] annotations through sys.modules.
        sys.modules[MODELS_MODULE] = module
        spec.loader.exec_module(module)
    metadata: sa.MetaData = sys.modules[MODELS_MODULE].target_metadata
    return metadata


def database_url() -> str:
    """Return the URL from -x url=..., DATABASE_URL, or sqlalchemy.url, in that order."""
    x_args = context.get_x_argument(as_dictionary=True)
    url = (
        x_args.get("url")
        or os.environ.get("DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise CommandError(
            "no database URL: pass -x url=..., set DATABASE_URL, or set sqlalchemy.url"
        )
    return url


def version_table() -> str:
    """Return the version table name from -x version_table=... or the ini."""
    x_args = context.get_x_argument(as_dictionary=True)
    return (
        x_args.get("version_table") or config.get_main_option("version_table") or "alembic_version"
    )


def version_table_schema() -> str | None:
    """Return the version table's schema from -x version_table_schema=... or the ini."""
    x_args = context.get_x_argument(as_dictionary=True)
    return (
        x_args.get("version_table_schema") or config.get_main_option("version_table_schema") or None
    )


target_metadata = load_target_metadata()


def run_migrations_offline() -> None:
    """Write the SQL to stdout (or the output buffer) without connecting."""
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=sa.engine.make_url(url).get_backend_name() == "sqlite",
        version_table=version_table(),
        version_table_schema=version_table_schema(),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Connect without pooling and run the revisions in one transaction where DDL allows."""
    engine = sa.create_engine(database_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                version_table=version_table(),
                version_table_schema=version_table_schema(),
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
