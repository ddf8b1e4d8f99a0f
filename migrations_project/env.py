"""Run the blog project's revisions online or offline against one database.

The URL comes from `-x url=...`, else the DATABASE_URL environment variable, else
`sqlalchemy.url` in alembic.ini. The version table comes from `-x version_table=...`
or the ini's `version_table` / `version_table_schema` (default: alembic_version).

Online runs on PostgreSQL and MariaDB/MySQL hold the run lock the migration dashboard takes
(see run_lock below), so a command-line run and a dashboard run never overlap; the run waits up
to ALEMBIC_RUN_LOCK_WAIT seconds (default 60) for another run to finish.

Two environment variables exist only so tests can watch a run from outside:
MIGRATIONS_PROJECT_SLEEP  seconds every revision's upgrade()/downgrade() sleeps before its DDL;
MIGRATIONS_PROJECT_FAIL   a revision id whose upgrade()/downgrade() raises RuntimeError after
                          its DDL (PostgreSQL then rolls the run back; SQLite and MariaDB keep it).
"""

import contextlib
import hashlib
import importlib.util
import os
import sys
import time
from collections.abc import Iterator
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


# --- The run lock: copy this block into your env.py (it needs only sqlalchemy). ---
RUN_LOCK_PREFIX = "alembic-run-lock:"


@contextlib.contextmanager
def run_lock(engine: sa.Engine, table: str, schema: str | None) -> Iterator[None]:
    """Hold the migration dashboard's run lock of the version table schema.table for the block.

    Polls a try-lock on a connection of its own (never a blocking wait) for up to
    ALEMBIC_RUN_LOCK_WAIT seconds, then fails naming the holder. Does nothing on SQLite, whose
    file lock already lets one writer in, nor in a dashboard run's child, whose worker holds
    the lock for it (MIGRATION_DASHBOARD_RUN_LOCK=held: never set it anywhere else).
    """
    name = engine.dialect.name
    if name not in ("postgresql", "mysql", "mariadb") or (
        os.environ.get("MIGRATION_DASHBOARD_RUN_LOCK") == "held"
    ):
        yield
        return
    wait = float(os.environ.get("ALEMBIC_RUN_LOCK_WAIT", "60"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # The lock's session sits idle all run: a server limit on idle sessions must not end it.
        if name == "postgresql":
            stay = ["SET idle_session_timeout = 0", "SET idle_in_transaction_session_timeout = 0"]
        else:
            stay = ["SET SESSION wait_timeout = 31536000, SESSION interactive_timeout = 31536000"]
        for statement in stay:
            with contextlib.suppress(sa.exc.DBAPIError):  # a server too old to have it
                conn.execute(sa.text(statement))
        if name == "postgresql":
            where = schema or conn.scalar(sa.text("SELECT current_schema()"))
            digest = hashlib.sha256(f"{RUN_LOCK_PREFIX}{where}.{table}".encode()).digest()
            key = int.from_bytes(digest[:8], "big", signed=True)
            take = sa.text("SELECT pg_try_advisory_lock(:k)").bindparams(k=key)
            who = sa.text(
                "SELECT 'pid ' || a.pid || ', user ' || a.usename || ', application '"
                " || coalesce(nullif(a.application_name, ''), '(none)') || ', from '"
                " || coalesce(host(a.client_addr), 'a local socket') || ', since '"
                " || to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"
                " || ' UTC' FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND l.classid::bigint = :high AND l.objid::bigint = :low"
            ).bindparams(high=(key >> 32) & 0xFFFFFFFF, low=key & 0xFFFFFFFF)
            release = sa.text("SELECT pg_advisory_unlock(:k)").bindparams(k=key)
        else:
            lock = f"{RUN_LOCK_PREFIX}{schema or conn.scalar(sa.text('SELECT DATABASE()'))}.{table}"
            if len(lock) > 64:  # the longest name GET_LOCK takes
                lock = RUN_LOCK_PREFIX + hashlib.sha256(lock.encode()).hexdigest()[:40]
            take = sa.text("SELECT GET_LOCK(:n, 0) = 1").bindparams(n=lock)
            who = sa.text(
                "SELECT CONCAT('connection id ', ID, ', user ', USER, ', from ', HOST,"
                " ', for ', TIME, ' s') FROM information_schema.PROCESSLIST"
                " WHERE ID = IS_USED_LOCK(:n)"
            ).bindparams(n=lock)
            release = sa.text("SELECT RELEASE_LOCK(:n)").bindparams(n=lock)
        deadline = time.monotonic() + wait
        while not conn.scalar(take):
            if time.monotonic() >= deadline:
                holder = conn.scalar(who) or "a session that could not be seen"
                raise CommandError(
                    f"another run holds the run lock ({holder}); waited {wait:g} s; nothing ran"
                )
            time.sleep(0.5)
        try:
            yield
        finally:
            conn.execute(release)


# --- End of the run lock. ---


def run_migrations_online() -> None:
    """Connect without pooling and run the revisions in one transaction where DDL allows."""
    engine = sa.create_engine(database_url(), poolclass=NullPool)
    try:
        with (
            run_lock(engine, version_table(), version_table_schema()),
            engine.connect() as connection,
        ):
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
