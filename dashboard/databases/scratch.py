"""Scratch databases for reference schemas: created per check, always dropped, swept when left."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from dashboard.config import parse_database_url, url_secrets
from dashboard.databases.versions import mask_secrets

logger = logging.getLogger(__name__)

# dashscratch_<unix time>_<host tag>_<pid>_<random>: who made it and when, for people. Whether it
# is still in use is told by a session-level lock named after it, which its maker holds from
# before CREATE DATABASE until after DROP DATABASE (and the server frees when that session ends,
# however its process died): a sweep drops only what it can lock itself. A pid says nothing
# across PID namespaces (containers sharing a hostname), and a replay may run for days.
PREFIX = "dashscratch_"
SQLITE_PREFIX = "dashscratch-"
CONNECT_TIMEOUT = 10
_NAME = re.compile(rf"{PREFIX}(?P<born>\d+)_(?P<host>[0-9a-f]{{6}})_(?P<pid>\d+)_[0-9a-f]{{8}}\Z")
_FOLDER = re.compile(rf"{SQLITE_PREFIX}(?P<pid>\d+)-")
_LOCK_FILE = "in-use.lock"  # flock()ed by the folder's maker while the folder is in use
FOLDER_GRACE = 60.0  # seconds: a folder without its lock file may be a moment old


class ScratchError(Exception):
    """A scratch database could not be created; the message holds no password."""


def backend_of(url: str) -> str:
    """Return the backend of a URL as the dashboard groups them: sqlite, postgresql or mysql."""
    backend = parse_database_url(url).get_backend_name()
    return "mysql" if backend == "mariadb" else backend


@contextmanager
def scratch_database(backend: str, server_url: str | None) -> Iterator[str]:
    """Yield the URL of a new, empty database of backend, and drop it afterwards, come what may.

    SQLite needs no server: a file in a private temporary folder. PostgreSQL and MySQL need
    server_url, where the dashboard may create and drop databases. The database's lock is held
    for its whole life, so no sweep drops it while it is in use.
    """
    if backend == "sqlite":
        with _scratch_folder() as folder:
            yield f"sqlite:///{folder / 'reference.db'}"
        return
    if server_url is None:
        raise ScratchError(f"no scratch server for {backend} is configured")
    if backend_of(server_url) != backend:
        raise ScratchError(
            f"the scratch server is {backend_of(server_url)}, not {backend} like the environment"
        )
    server = parse_database_url(server_url)
    name = new_name()
    engine = _admin_engine(server)
    try:
        # The holder's session owns the lock: closing it (or its process dying) frees it.
        with _connect(engine, server) as holder:
            _stay_connected(holder, backend)
            if not _try_lock(holder, backend, name, server):
                raise ScratchError(f"scratch database {name} is locked by another session")
            _run(holder, _create_sql(backend, name), server)
            try:
                yield server.set(database=name).render_as_string(hide_password=False)
            finally:
                _drop(engine, holder, backend, name, server)
    finally:
        engine.dispose()


def create_schema(url: str, schema: str) -> None:
    """Create a schema in the (PostgreSQL) scratch database at url, for a version_table_schema."""
    parsed = parse_database_url(url)
    engine = _admin_engine(parsed)
    quoted = engine.dialect.identifier_preparer.quote_identifier(schema)
    try:
        _execute(engine, f"CREATE SCHEMA IF NOT EXISTS {quoted}", parsed)
    finally:
        engine.dispose()


def new_name() -> str:
    """Return a scratch database name unique to this check."""
    return f"{PREFIX}{int(time.time())}_{host_tag()}_{os.getpid()}_{secrets.token_hex(4)}"


def folder_prefix() -> str:
    """Return the start of a SQLite scratch folder's name: who made it, for people."""
    return f"{SQLITE_PREFIX}{os.getpid()}-"


def host_tag() -> str:
    """Return six hex digits naming this host (for people: the lock says whether it is in use)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def is_scratch_name(name: str) -> bool:
    """Say whether name is one scratch_database makes."""
    return _NAME.match(name) is not None


def sweep(server_url: str | None) -> list[str]:
    """Drop the scratch databases (and SQLite scratch folders) nobody holds; return them."""
    dropped = _sweep_folders()
    if server_url is None:
        return dropped
    server = parse_database_url(server_url)
    backend = backend_of(server_url)
    engine = _admin_engine(server)
    try:
        with _connect(engine, server) as conn:
            for name in filter(is_scratch_name, _database_names(conn, backend, server)):
                # Held: its maker lives, whatever host or PID namespace it runs in.
                if not _try_lock(conn, backend, name, server):
                    continue
                try:
                    _run(conn, _drop_sql(backend, name), server)
                    dropped.append(name)
                except ScratchError as exc:
                    logger.warning("could not drop scratch database %s: %s", name, exc)
                finally:
                    _unlock(conn, backend, name, server)
    finally:
        engine.dispose()
    return dropped


def _database_names(conn: sa.Connection, backend: str, server: URL) -> list[str]:
    try:
        if backend == "postgresql":
            rows = conn.execute(
                sa.text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                {"p": PREFIX.replace("_", r"\_") + "%"},
            )
        else:
            rows = conn.execute(sa.text("SHOW DATABASES"))
        return [str(row[0]) for row in rows]
    except sa.exc.SQLAlchemyError as exc:
        raise ScratchError(_message(exc, server)) from None


def lock_key(name: str) -> int:
    """Return the PostgreSQL advisory lock key (a signed 64-bit number) of a scratch database."""
    digest = hashlib.sha256(f"dashboard scratch {name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# Advisory locks belong to one database: holders and sweeps all use the server URL's.
_LOCK = {"postgresql": "SELECT pg_try_advisory_lock(:key)", "mysql": "SELECT GET_LOCK(:name, 0)"}
_UNLOCK = {"postgresql": "SELECT pg_advisory_unlock(:key)", "mysql": "SELECT RELEASE_LOCK(:name)"}


def _try_lock(conn: sa.Connection, backend: str, name: str, server: URL) -> bool:
    """Take the scratch database's lock in conn's session without waiting; say if it was."""
    return bool(_lock_call(conn, _LOCK[backend], name, server))


def _unlock(conn: sa.Connection, backend: str, name: str, server: URL) -> None:
    _lock_call(conn, _UNLOCK[backend], name, server)


def _lock_call(conn: sa.Connection, sql: str, name: str, server: URL) -> object:
    params = {"key": lock_key(name)} if ":key" in sql else {"name": name}
    try:
        return conn.execute(sa.text(sql), params).scalar()
    except sa.exc.SQLAlchemyError as exc:
        raise ScratchError(_message(exc, server)) from None


def _stay_connected(conn: sa.Connection, backend: str) -> None:
    """Keep the server from closing the holder's idle session (and so freeing the lock)."""
    # MariaDB closes sessions idle for wait_timeout (8 h by default); PostgreSQL 14+ may have
    # idle_session_timeout set. A replay may run far longer while the holder waits silently.
    if backend == "postgresql":
        sql = "SET idle_session_timeout = 0"
    else:
        sql = "SET SESSION wait_timeout = 31536000"
    # An older server without the setting closes no idle session.
    with contextlib.suppress(sa.exc.SQLAlchemyError):
        conn.execute(sa.text(sql))


def _drop(engine: sa.Engine, holder: sa.Connection, backend: str, name: str, server: URL) -> None:
    """Drop a scratch database through its holder, or a new session if the holder's was lost."""
    try:
        _run(holder, _drop_sql(backend, name), server)
        return
    except ScratchError:
        pass
    try:
        _execute(engine, _drop_sql(backend, name), server)
    except ScratchError:
        # Its lock is gone with the holder's session: the next sweep drops it.
        logger.warning("could not drop scratch database %s", name)


@contextmanager
def _scratch_folder() -> Iterator[Path]:
    """Yield a private temporary folder, flock()ed while in use, and remove it afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=folder_prefix()))
    try:
        handle = os.open(folder / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield folder
        finally:
            os.close(handle)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _sweep_folders() -> list[str]:
    dropped = []
    root = Path(tempfile.gettempdir())
    for folder in root.glob(f"{SQLITE_PREFIX}*"):
        match = _FOLDER.match(folder.name)
        if match is None or not _unused_folder(folder, int(match["pid"])):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        dropped.append(folder.name)
    return dropped


def _unused_folder(folder: Path, pid: int) -> bool:
    """Say whether nobody uses a scratch folder: its lock is free (or, without one, pid is dead)."""
    try:
        handle = os.open(folder / _LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        # Made a moment ago (the lock file comes next), or left by an older version.
        return pid != os.getpid() and not _alive(pid) and _older_than(folder, FOLDER_GRACE)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its maker lives, whatever PID namespace it runs in
    finally:
        os.close(handle)  # frees the lock we may have taken
    return True


def _older_than(folder: Path, seconds: float) -> bool:
    try:
        return time.time() - folder.stat().st_mtime > seconds
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _connect(engine: sa.Engine, server: URL) -> sa.Connection:
    try:
        return engine.connect()
    except sa.exc.SQLAlchemyError as exc:
        raise ScratchError(_message(exc, server)) from None


def _run(conn: sa.Connection, sql: str, server: URL) -> None:
    try:
        conn.execute(sa.text(sql))
    except sa.exc.SQLAlchemyError as exc:
        raise ScratchError(_message(exc, server)) from None


def _admin_engine(server: URL) -> sa.Engine:
    backend = server.get_backend_name()
    if backend == "postgresql":
        args: dict[str, object] = {"connect_timeout": CONNECT_TIMEOUT}
        if "application_name" not in server.query:
            args["application_name"] = "migration-dashboard scratch"
    else:
        args = {"connect_timeout": CONNECT_TIMEOUT}
    return sa.create_engine(
        server, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args=args
    )


def _create_sql(backend: str, name: str) -> str:
    if backend == "postgresql":
        # template0: what template1 gained (PostGIS, extensions) would read as drift.
        return f'CREATE DATABASE "{name}" TEMPLATE template0'
    return f"CREATE DATABASE `{name}`"


def _drop_sql(backend: str, name: str) -> str:
    if backend == "postgresql":
        # FORCE ends the sessions a killed replay may leave for a moment.
        return f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    return f"DROP DATABASE IF EXISTS `{name}`"


def _execute(engine: sa.Engine, sql: str, server: URL) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(sql))
    except sa.exc.SQLAlchemyError as exc:
        raise ScratchError(_message(exc, server)) from None


def _message(exc: BaseException, server: URL) -> str:
    original = getattr(exc, "orig", None) or exc
    first = str(original).strip().splitlines()[0] if str(original).strip() else type(exc).__name__
    where = f"{server.host or 'localhost'}:{server.port}" if server.port else server.host
    text = f"scratch server {where}: {first}"[:300]
    return mask_secrets(text, url_secrets(server))
