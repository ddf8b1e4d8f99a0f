"""Read environments' Alembic version tables safely: timeouts, no pooling, in parallel."""

from __future__ import annotations

import dataclasses
import logging
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from dashboard.config import (
    BadDatabaseURL,
    Environment,
    NotConfigured,
    Project,
    parse_database_url,
    url_secrets,
)
from dashboard.databases.connect import _connect_args, mask_secrets

logger = logging.getLogger(__name__)
ErrorKind = Literal["not_configured", "unreachable", "timeout", "auth", "error"]

# How long the caller waits past an environment's timeout before abandoning the read: the
# drivers' own timeouts normally fire first and give the more precise message.
DEADLINE_GRACE = 0.5
MAX_MESSAGE = 300
# Engines are unpooled (they hold no connections); keeping them saves the dialect's
# first-connect queries on every later refresh of the same environment.
ENGINE_CACHE_SIZE = 256

_QUOTED = r"""["']([^"']*)["']"""
_engines: OrderedDict[tuple[URL, float], sa.Engine] = OrderedDict()
_engines_lock = threading.Lock()


@dataclass(frozen=True)
class Reading:
    """What one environment's version table said, or why it could not be read."""

    environment: str
    heads: tuple[str, ...]
    table_exists: bool
    error: str | None
    error_kind: ErrorKind | None
    latency_ms: float
    read_at: datetime
    # Who held the run lock (pid, user, application, client, since); {} for nobody or unknown.
    run_lock: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Say whether the version table (or its absence) was read."""
        return self.error is None


@dataclass(frozen=True)
class _Target:
    """What an error message needs to name: where we connected and which table we read."""

    url: URL
    version_table: str
    version_table_schema: str | None
    timeout: float

    @property
    def address(self) -> str:
        host = self.url.host or "localhost"
        return f"{host}:{self.url.port}" if self.url.port else host


def read_environment(env: Environment, project: Project, *, run_lock: bool = False) -> Reading:
    """Read one environment's heads with its project's version table settings; never raise.

    run_lock also asks who holds the run lock, at the same time and within the same deadline.
    """
    started = time.perf_counter()
    try:
        url = env.database_url()
    except NotConfigured as exc:
        return _failure(env.name, "not_configured", str(exc), started)
    looker = _RunLockLook(url, project, env.timeout) if run_lock and _has_run_lock(url) else None
    reading = read_url(
        url,
        version_table=project.version_table,
        version_table_schema=project.version_table_schema,
        timeout=env.timeout,
        environment=env.name,
    )
    if looker is None or not reading.ok:
        return reading
    holder = looker.result(env.timeout + DEADLINE_GRACE - (time.perf_counter() - started))
    return dataclasses.replace(reading, run_lock=holder) if holder else reading


def read_url(
    url: str,
    *,
    version_table: str = "alembic_version",
    version_table_schema: str | None = None,
    timeout: float = 5.0,
    environment: str = "",
) -> Reading:
    """Read the heads at a database URL, giving up after timeout plus a short grace; never raise."""
    started = time.perf_counter()
    try:
        parsed = parse_database_url(url)
    except BadDatabaseURL as exc:
        return _failure(environment, "error", str(exc), started)
    target = _Target(parsed, version_table, version_table_schema, timeout)
    box: list[Reading] = []
    # A daemon thread, so a read stuck inside a driver never blocks the caller past its
    # deadline nor the interpreter's exit; it is abandoned and ends when the driver gives up.
    worker = threading.Thread(
        target=lambda: box.append(_read(target, environment)),
        name=f"version-read-{environment or parsed.get_backend_name()}",
        daemon=True,
    )
    worker.start()
    worker.join(timeout + DEADLINE_GRACE)
    if box:
        return box[0]
    return _failure(environment, "timeout", _timed_out(timeout), started)


def read_many(
    pairs: Iterable[tuple[Environment, Project]], *, max_workers: int = 50, run_lock: bool = False
) -> list[Reading]:
    """Read many environments in parallel, in input order; never raise."""
    jobs = list(pairs)
    if not jobs:
        return []
    # Every read is bounded by its own deadline, so a hung server holds one worker for at most
    # its timeout; with more environments than workers the reads run in waves.
    workers = max(1, min(max_workers, len(jobs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="version-reads") as pool:
        return list(pool.map(lambda job: read_environment(*job, run_lock=run_lock), jobs))


class _RunLockLook:
    """Ask who holds an environment's run lock in a daemon thread, beside the version read."""

    def __init__(self, url: str, project: Project, timeout: float) -> None:
        self._box: list[dict[str, Any]] = []
        self._thread = threading.Thread(
            target=lambda: self._box.append(_run_lock_holder(url, project, timeout)),
            name="run-lock-read",
            daemon=True,  # a look stuck in a driver is abandoned, as a version read is
        )
        self._thread.start()

    def result(self, patience: float) -> dict[str, Any]:
        """Return the holder, or {} when nobody holds it or the answer did not come in time."""
        self._thread.join(max(0.0, patience))
        return self._box[0] if self._box else {}


def _has_run_lock(url: str) -> bool:
    """Say whether the dashboard takes a run lock on this URL's database (not on SQLite)."""
    try:
        backend = parse_database_url(url).get_backend_name()
    except BadDatabaseURL:
        return False
    return backend in ("postgresql", "mysql", "mariadb")


def _run_lock_holder(url: str, project: Project, timeout: float) -> dict[str, Any]:
    """Return who holds the run lock, as a snapshot stores it; {} for nobody or unknown."""
    from dashboard.databases import runlock  # its own module; only status refreshes need it

    try:
        found = runlock.holder(url, project, timeout=timeout)
    except Exception as exc:  # the heads were read; the lock's holder is only unknown
        secrets = url_secrets(parse_database_url(url))
        reason = mask_secrets(_first_line(exc), secrets)
        logger.warning("could not read who holds the run lock of %s: %s", project.name, reason)
        return {}
    return _as_holder(found) if found else {}


def _as_holder(found: dict[str, Any]) -> dict[str, Any]:
    """Return a holder with the keys the pages read, its moment as ISO text (JSON-ready)."""
    since = found.get("since")

    def first(*keys: str) -> str:
        return next((str(found[key]) for key in keys if found.get(key) not in (None, "")), "")

    return {
        "pid": found.get("pid"),
        "user": first("user", "usename"),
        "application": first("application", "application_name"),
        "client": first("client", "client_addr", "client_address", "host"),
        "since": since.isoformat() if isinstance(since, datetime) else since,
        "noun": first("noun"),  # MariaDB's holder is a connection id, not a pid
    }


def forget_engines() -> None:
    """Drop the cached engines, e.g. after a config reload changed the URLs."""
    with _engines_lock:
        _engines.clear()


def _read(target: _Target, environment: str) -> Reading:
    started = time.perf_counter()
    url = target.url
    qualified = _qualified(target, None)
    try:
        if _is_sqlite_file(url) and not Path(str(url.database)).is_file():
            return _failure(
                environment, "error", f"database file {url.database} does not exist", started
            )
        with _engine(url, target.timeout).connect() as conn:
            inspector = sa.inspect(conn)
            qualified = _qualified(target, inspector.default_schema_name)
            # What Alembic's MigrationContext.get_current_heads() does, without importing
            # Alembic (a CI gate's whole run costs less than that import).
            exists = inspector.has_table(target.version_table, schema=target.version_table_schema)
            rows = conn.execute(sa.select(_version_table(target).c.version_num)) if exists else ()
            heads = tuple(sorted(_as_text(row[0]) for row in rows))
        return Reading(
            environment=environment,
            heads=heads,
            table_exists=exists,
            error=None,
            error_kind=None,
            latency_ms=_elapsed_ms(started),
            read_at=datetime.now(UTC),
        )
    except Exception as exc:  # a reading reports every failure instead of raising
        kind, message = _describe(exc, target, qualified)
        return _failure(environment, kind, message, started)


def _version_table(target: _Target) -> sa.Table:
    """Return the version table as Alembic's DefaultImpl.version_table_impl defines it."""
    return sa.Table(
        target.version_table,
        sa.MetaData(),
        sa.Column("version_num", sa.String(32), nullable=False),
        schema=target.version_table_schema,
    )


def _as_text(value: object) -> str:
    """Return a version row as text: a junk table can hold numbers, bytes, NULLs or NULs."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    text = "" if value is None else str(value)
    # PostgreSQL's text and jsonb refuse NUL, and a snapshot must still be stored.
    return text.replace("\x00", "\\x00")


def _engine(url: URL, timeout: float) -> sa.Engine:
    """Return the cached unpooled engine for this URL and timeout, creating it if needed."""
    key = (url, timeout)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is not None:
            _engines.move_to_end(key)
            return engine
    engine = _create_engine(url, timeout)
    with _engines_lock:
        _engines[key] = engine
        while len(_engines) > ENGINE_CACHE_SIZE:
            _engines.popitem(last=False)
    return engine


def _create_engine(url: URL, timeout: float) -> sa.Engine:
    """Create an unpooled engine whose driver gives up on connect and statements in time."""
    if _is_sqlite_file(url):
        # Read-only through a URI, so a mistyped path fails instead of creating an empty file.
        path = Path(str(url.database)).resolve()
        uri = f"file:{quote(str(path), safe='/')}?mode=ro"

        def connect_read_only() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)

        return sa.create_engine(url, poolclass=NullPool, creator=connect_read_only)
    return sa.create_engine(url, poolclass=NullPool, connect_args=_connect_args(url, timeout))


def _is_sqlite_file(url: URL) -> bool:
    database = url.database
    return (
        url.get_backend_name() == "sqlite"
        and bool(database)
        and database != ":memory:"
        and str(url.query.get("uri", "")).lower() not in ("true", "1")
    )


def _describe(exc: Exception, target: _Target, table: str) -> tuple[ErrorKind, str]:
    """Turn a driver or SQLAlchemy exception into an error kind and a short message."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        original: BaseException = exc.orig
    else:
        original = exc
    if isinstance(exc, NoSuchModuleError):
        return "error", f"unsupported database URL scheme {target.url.drivername!r}"
    if isinstance(exc, ArgumentError):
        return "error", "not a valid database URL"
    if isinstance(exc, ImportError):
        module = f" {exc.name!r}" if exc.name else ""
        return "error", f"driver{module} for {target.url.drivername}:// is not installed"
    if isinstance(original, TimeoutError):
        return "timeout", _timed_out(target.timeout)
    backend = target.url.get_backend_name()
    if backend == "postgresql":
        described = _describe_postgres(original, target, table)
    elif backend in ("mysql", "mariadb"):
        described = _describe_mysql(original, target, table)
    elif backend == "sqlite":
        described = _describe_sqlite(original, target)
    else:
        described = None
    secrets = url_secrets(target.url)
    if described is None:  # the driver's own words, which may quote anything
        return "error", mask_secrets(_first_line(original), secrets)
    kind, message = described
    return kind, mask_secrets(message, secrets, whole_words=True)


def _describe_postgres(
    original: BaseException, target: _Target, table: str
) -> tuple[ErrorKind, str] | None:
    code = getattr(original, "pgcode", None)
    text = str(original)
    lowered = text.lower()
    user = target.url.username or ""
    if code == "57014":
        return "timeout", _timed_out(target.timeout)
    if code == "55P03":
        return "timeout", _lock_wait(target, table)
    if code == "42501":
        return "error", f"version table {table}: permission denied"
    if "timeout expired" in lowered:
        return "timeout", _timed_out(target.timeout)
    if "connection refused" in lowered:
        return "unreachable", f"could not connect to {target.address}: connection refused"
    if match := re.search(r'could not translate host name "([^"]*)"', text):
        return "unreachable", f"could not resolve host {match.group(1)!r}"
    for reason in ("no route to host", "network is unreachable"):
        if reason in lowered:
            return "unreachable", f"could not connect to {target.address}: {reason}"
    if "server closed the connection unexpectedly" in lowered:
        return "unreachable", f"{target.address} closed the connection unexpectedly"
    if match := re.search(r"authentication failed for user " + _QUOTED, text):
        return "auth", f"authentication failed for user {match.group(1)!r}"
    if match := re.search(r"role " + _QUOTED + " does not exist", text):
        return "auth", f"role {match.group(1)!r} does not exist"
    if "no pg_hba.conf entry" in lowered:
        return "auth", f"server refuses user {user!r} from this host (pg_hba.conf)"
    if "password" in lowered and "no password supplied" in lowered:
        return "auth", f"server wants a password for user {user!r} and the URL has none"
    if match := re.search(r"database " + _QUOTED + " does not exist", text):
        return "error", f"database {match.group(1)!r} does not exist"
    if match := re.search(r"permission denied for database " + _QUOTED, text):
        return "auth", f"user {user!r} may not connect to database {match.group(1)!r}"
    return None


def _describe_mysql(
    original: BaseException, target: _Target, table: str
) -> tuple[ErrorKind, str] | None:
    args: tuple[Any, ...] = getattr(original, "args", ())
    code = args[0] if args and isinstance(args[0], int) else None
    text = str(args[1]) if len(args) > 1 else str(original)
    lowered = text.lower()
    user = target.url.username or ""
    if code in (2003, 2013) and "timed out" in lowered:
        return "timeout", _timed_out(target.timeout)
    if code == 2003 and "refused" in lowered:
        return "unreachable", f"could not connect to {target.address}: connection refused"
    if code == 2005 or (
        code == 2003 and ("name or service" in lowered or "getaddrinfo" in lowered)
    ):
        return "unreachable", f"could not resolve host {target.url.host or ''!r}"
    if code == 2003:
        return "unreachable", f"could not connect to {target.address}"
    if code in (2006, 2013):
        return "unreachable", f"{target.address} closed the connection unexpectedly"
    if code == 1045:
        return "auth", f"authentication failed for user {user!r}"
    if code == 1044:
        return "auth", f"user {user!r} may not access database {target.url.database or ''!r}"
    if code == 1049:
        return "error", f"database {target.url.database or ''!r} does not exist"
    if code in (1142, 1143):
        return "error", f"version table {table}: permission denied"
    if code == 1205:
        return "timeout", _lock_wait(target, table)
    if code in (1969, 3024):
        return "timeout", _timed_out(target.timeout)
    return None


def _describe_sqlite(original: BaseException, target: _Target) -> tuple[ErrorKind, str] | None:
    lowered = str(original).lower()
    path = target.url.database
    if "database is locked" in lowered:
        return "timeout", f"database is locked (waited {_seconds(target.timeout)})"
    if "file is not a database" in lowered:
        return "error", f"{path} is not a SQLite database"
    if "unable to open database file" in lowered:
        return "error", f"cannot open database file {path}"
    return None


def _qualified(target: _Target, default_schema: str | None) -> str:
    schema = target.version_table_schema or default_schema
    return f"{schema}.{target.version_table}" if schema else target.version_table


def _lock_wait(target: _Target, table: str) -> str:
    return f"version table {table}: lock not granted within {_seconds(target.timeout)}"


def _timed_out(timeout: float) -> str:
    return f"timed out after {_seconds(timeout)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    if len(line) > MAX_MESSAGE:
        line = line[: MAX_MESSAGE - 3] + "..."
    return line


def _seconds(value: float) -> str:
    text = f"{value:.1f}"
    return f"{text if float(text) == value else f'{value:g}'} s"


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _failure(environment: str, kind: ErrorKind, message: str, started: float) -> Reading:
    return Reading(
        environment=environment,
        heads=(),
        table_exists=False,
        error=message,
        error_kind=kind,
        latency_ms=_elapsed_ms(started),
        read_at=datetime.now(UTC),
    )
