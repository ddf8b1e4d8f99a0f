"""Scratch databases for reference schemas: created per check, always dropped, swept when left."""

from __future__ import annotations

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

# dashscratch_<unix time>_<host tag>_<pid>_<random>: who made it and when, so a sweep drops only
# what a dead worker of this host left, or what is older than any replay may run.
PREFIX = "dashscratch_"
SQLITE_PREFIX = "dashscratch-"
MAX_AGE = 24 * 3600.0  # seconds: no replay runs this long (replay_time_limit is capped lower)
CONNECT_TIMEOUT = 10
_NAME = re.compile(rf"{PREFIX}(?P<born>\d+)_(?P<host>[0-9a-f]{{6}})_(?P<pid>\d+)_[0-9a-f]{{8}}\Z")
_FOLDER = re.compile(rf"{SQLITE_PREFIX}(?P<pid>\d+)-")


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
    server_url, where the dashboard may create and drop databases.
    """
    if backend == "sqlite":
        folder = tempfile.mkdtemp(prefix=f"{SQLITE_PREFIX}{os.getpid()}-")
        try:
            yield f"sqlite:///{Path(folder) / 'reference.db'}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
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
        _execute(engine, _create_sql(backend, name), server)
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            try:
                _execute(engine, _drop_sql(backend, name), server)
            except ScratchError:
                # The sweep at the next worker start drops it.
                logger.warning("could not drop scratch database %s", name)
    finally:
        engine.dispose()


def new_name() -> str:
    """Return a scratch database name unique to this check."""
    return f"{PREFIX}{int(time.time())}_{host_tag()}_{os.getpid()}_{secrets.token_hex(4)}"


def host_tag() -> str:
    """Return six hex digits naming this host, so one host never sweeps another's scratch."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def is_abandoned(name: str, *, now: float | None = None) -> bool:
    """Say whether a scratch database was left by a dead process of this host, or is too old."""
    match = _NAME.match(name)
    if match is None:
        return False
    now = time.time() if now is None else now
    if now - int(match["born"]) > MAX_AGE:
        return True
    return match["host"] == host_tag() and not _alive(int(match["pid"]))


def sweep(server_url: str | None) -> list[str]:
    """Drop abandoned scratch databases (and SQLite scratch folders); return what was dropped."""
    dropped = _sweep_folders()
    if server_url is None:
        return dropped
    server = parse_database_url(server_url)
    backend = backend_of(server_url)
    engine = _admin_engine(server)
    try:
        with engine.connect() as conn:
            if backend == "postgresql":
                rows = conn.execute(
                    sa.text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                    {"p": PREFIX.replace("_", r"\_") + "%"},
                )
            else:
                rows = conn.execute(sa.text("SHOW DATABASES"))
            names = [str(row[0]) for row in rows]
        for name in names:
            if is_abandoned(name):
                _execute(engine, _drop_sql(backend, name), server)
                dropped.append(name)
    except sa.exc.SQLAlchemyError as exc:
        raise ScratchError(_message(exc, server)) from None
    finally:
        engine.dispose()
    return dropped


def _sweep_folders() -> list[str]:
    dropped = []
    root = Path(tempfile.gettempdir())
    for folder in root.glob(f"{SQLITE_PREFIX}*"):
        match = _FOLDER.match(folder.name)
        if match and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"])):
            shutil.rmtree(folder, ignore_errors=True)
            dropped.append(folder.name)
    return dropped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    return f'CREATE DATABASE "{name}"' if backend == "postgresql" else f"CREATE DATABASE `{name}`"


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
