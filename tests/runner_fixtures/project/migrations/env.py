"""Migration environment of the runner's test project, shaped like Alembic's stock one."""

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

VERSION_OPTIONS = {
    "version_table": config.get_main_option("version_table", "alembic_version"),
    "version_table_schema": config.get_main_option("version_table_schema"),
}


def database_url() -> str:
    """Return DATABASE_URL, else sqlalchemy.url; only the ini when the test asks for it."""
    if os.environ.get("RUNNER_TEST_URL_FROM") != "ini" and os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    return url


def run_migrations_offline() -> None:
    """Write the SQL to stdout without connecting."""
    context.configure(
        url=database_url(),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **VERSION_OPTIONS,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a connection."""
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, **VERSION_OPTIONS)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
