"""The run lock: one Alembic run at a time per version table, shared with command-line runs.

Alembic takes no lock of its own, so two runs against one database (two replicas, a laptop and
the dashboard) interleave their DDL. For a whole run the worker holds a session-level lock on
the target database, on a connection of its own, and the sample env.py takes the same lock,
so any two runs that both take it exclude each other.

The lock is named after the version table, schema-qualified, because that table is what two
runs fight over:

- PostgreSQL: ``pg_try_advisory_lock(key)`` with key the first 8 bytes, read as a signed
  big-endian integer, of ``sha256("alembic-run-lock:" + schema + "." + table)``, where schema
  is the project's version_table_schema, else the connection's ``current_schema()``. For
  ``public.alembic_version`` that is -393125886568357016. ``pg_locks`` shows it as an advisory
  lock with classid and objid the key's high and low 32 bits and objsubid 1.
- MariaDB/MySQL: ``GET_LOCK(name, 0)`` with name ``"alembic-run-lock:" + database + "." +
  table`` (database: version_table_schema, else ``DATABASE()``); a name longer than the 64
  characters the server takes becomes ``"alembic-run-lock:"`` plus the first 40 hex digits of
  its sha256. ``IS_USED_LOCK(name)`` gives the holder's connection id.
- SQLite: no run lock; SQLite's own file lock lets one writer at a time in.

The lock is only ever tried (``pg_try_advisory_lock``, ``GET_LOCK(name, 0)``) and the try is
repeated: a blocking wait could deadlock with ``CREATE INDEX CONCURRENTLY``, which waits for
every older transaction; the lock's connection also stays outside any transaction. Session
locks die with their connection, so a killed worker leaves none behind.

The lock's connection sits idle for the whole run, so it turns off what would end an idle
session (PostgreSQL's idle_session_timeout and idle_in_transaction_session_timeout, MariaDB's
wait_timeout and interactive_timeout). A DBA can still end it: ``Held.still_held()`` says whether
the lock is still there, and the worker stops a run that lost it.

The Alembic child of a dashboard run gets MIGRATION_DASHBOARD_RUN_LOCK=held: its env.py must
not take the lock the worker already holds for it (it would wait for itself). A laptop or CI
job must never set that variable.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from dashboard.config import BadDatabaseURL, Project, parse_database_url, url_secrets
from dashboard.databases.connect import _connect_args, mask_secrets

PREFIX = "alembic-run-lock:"
APPLICATION_NAME = "migration-dashboard run lock"
# Set in the environment of the Alembic child of a dashboard run, whose worker holds the lock.
HELD_VARIABLE = "MIGRATION_DASHBOARD_RUN_LOCK"
HELD_VALUE = "held"
MYSQL_NAME_LIMIT = 64
# MariaDB shows no application name: the worker's lock connection also holds this named lock,
# its connection id appended, so a holder can be recognised as the dashboard.
MYSQL_MARKER = f"{APPLICATION_NAME} #"
POLL = 0.5
MAX_MESSAGE = 300
# A year: MariaDB's largest wait_timeout on every platform.
MYSQL_STAY_CONNECTED = 31536000


class RunLockError(Exception):
    """The run lock could not be taken or looked at (the message names why, password masked)."""


class RunLockBusy(RunLockError):
    """Someone else held the run lock for longer than the run would wait."""

    def __init__(self, holder: dict[str, Any] | None, waited: float) -> None:
        self.holder = holder
        self.waited = waited
        super().__init__(f"the run lock is held by {describe(holder)}; waited {waited:.0f} s")


def postgresql_key(schema: str, table: str) -> int:
    """Return the advisory lock key of the version table schema.table."""
    digest = hashlib.sha256(f"{PREFIX}{schema}.{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def mysql_name(database: str, table: str) -> str:
    """Return the GET_LOCK name of the version table database.table."""
    name = f"{PREFIX}{database}.{table}"
    if len(name) <= MYSQL_NAME_LIMIT:
        return name
    return PREFIX + hashlib.sha256(name.encode()).hexdigest()[:40]


def describe(holder: dict[str, Any] | None) -> str:
    """Say who holds the lock: "pid 42, user bob, application psql, from 10.0.0.5, since ..."."""
    if not holder or holder.get("pid") is None:
        return "a session that could not be seen"
    parts = [f"{holder.get('noun', 'pid')} {holder['pid']}"]
    if holder.get("user"):
        parts.append(f"user {holder['user']}")
    parts.append(f"application {holder.get('application') or '(none)'}")
    parts.append(f"from {holder.get('client') or 'a local socket'}")
    if holder.get("since"):
        parts.append(f"since {_clock(holder['since'])}")
    return ", ".join(parts)


@contextlib.contextmanager
def hold(
    url: str,
    project: Project,
    *,
    wait: float,
    poll: float = POLL,
    timeout: float = 5.0,
    on_wait: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[Held | None]:
    """Hold the run lock of url's version table for the block; yield the held lock.

    Tries the lock every poll seconds, calling on_wait(holder) while another session holds
    it (an exception from on_wait ends the wait), and raises RunLockBusy after wait seconds.
    Yields a Held (its identity {"key": ...} or {"name": ...}), or None on SQLite, which has
    no run lock.
    """
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    if backend not in ("postgresql", "mysql", "mariadb"):
        yield None
        return
    secrets = url_secrets(parsed)
    engine = _engine(parsed, timeout)
    try:
        with _translated(secrets):
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            with _translated(secrets):
                _stay_connected(conn, backend)
                lock = _Lock(conn, backend, project)
            started = time.monotonic()
            while True:
                with _translated(secrets):
                    if lock.try_take():
                        break
                    seen = lock.holder()
                waited = time.monotonic() - started
                if waited >= wait:
                    raise RunLockBusy(seen, waited)
                if on_wait is not None:
                    on_wait(seen or {"kind": "run_lock", "pid": None})
                time.sleep(max(0.0, min(poll, wait - waited)))
            held = Held(lock)
            try:
                yield held
            finally:
                held.release()
        finally:
            with contextlib.suppress(Exception):
                conn.close()
    finally:
        engine.dispose()


def holder(url: str, project: Project, *, timeout: float = 5.0) -> dict[str, Any] | None:
    """Return who holds the run lock of url's version table, or None when nobody does.

    Raises RunLockError when the database cannot be asked.
    """
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    if backend not in ("postgresql", "mysql", "mariadb"):
        return None
    engine = _engine(parsed, timeout)
    try:
        with (
            _translated(url_secrets(parsed)),
            engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        ):
            return _Lock(conn, backend, project).holder()
    finally:
        engine.dispose()


class Held:
    """A run lock this process holds; still_held() may be asked from another thread."""

    def __init__(self, lock: _Lock) -> None:
        self._lock = lock
        self.identity = lock.identity
        self._guard = threading.Lock()  # one statement at a time on the lock's connection
        self._released = False

    def still_held(self) -> bool:
        """Say whether the lock is still ours: False once its connection ended or it went."""
        with self._guard:
            if self._released:
                return True  # given back at the block's end, not lost
            return self._lock.still_held()

    def release(self) -> None:
        """Give the lock back."""
        with self._guard:
            self._released = True
            self._lock.release()

    def __repr__(self) -> str:
        return f"Held({self.identity!r})"


def _stay_connected(conn: sa.Connection, backend: str) -> None:
    """Keep the server from ending the lock's idle session, and so freeing the lock."""
    if backend == "postgresql":
        statements = ["SET idle_session_timeout = 0", "SET idle_in_transaction_session_timeout = 0"]
    else:
        statements = [
            f"SET SESSION wait_timeout = {MYSQL_STAY_CONNECTED},"
            f" SESSION interactive_timeout = {MYSQL_STAY_CONNECTED}"
        ]
    for statement in statements:
        # An older server without the setting ends no idle session for it.
        with contextlib.suppress(sa.exc.ProgrammingError, sa.exc.OperationalError):
            conn.execute(sa.text(statement))


class _Lock:
    """The run lock as seen from one connection: take it, give it back, say who holds it."""

    def __init__(self, conn: sa.Connection, backend: str, project: Project) -> None:
        self.conn = conn
        self.postgresql = backend == "postgresql"
        table = project.version_table
        if self.postgresql:
            schema = project.version_table_schema or conn.scalar(sa.text("SELECT current_schema()"))
            self.key = postgresql_key(str(schema or "public"), table)
            self.identity: dict[str, Any] = {"key": self.key}
        else:
            database = project.version_table_schema or conn.scalar(sa.text("SELECT DATABASE()"))
            self.name = mysql_name(str(database or ""), table)
            self.identity = {"name": self.name}

    def try_take(self) -> bool:
        if self.postgresql:
            return bool(
                self.conn.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key})
            )
        taken = self.conn.scalar(sa.text("SELECT GET_LOCK(:n, 0)"), {"n": self.name}) == 1
        if taken:
            self.conn.execute(
                sa.text("DO GET_LOCK(CONCAT(:m, CONNECTION_ID()), 0)"), {"m": MYSQL_MARKER}
            )
        return taken

    def still_held(self) -> bool:
        try:
            if self.postgresql:
                return bool(
                    self.conn.scalar(
                        sa.text(
                            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
                            " AND granted AND objsubid = 1 AND pid = pg_backend_pid()"
                            " AND classid::bigint = :high AND objid::bigint = :low)"
                        ),
                        {"high": (self.key >> 32) & 0xFFFFFFFF, "low": self.key & 0xFFFFFFFF},
                    )
                )
            return bool(
                self.conn.scalar(
                    sa.text("SELECT IS_USED_LOCK(:n) <=> CONNECTION_ID()"), {"n": self.name}
                )
            )
        except sa.exc.DBAPIError as exc:
            # A live session keeps its lock even when one look failed (a statement timeout).
            return not (exc.connection_invalidated or self.conn.invalidated)
        except sa.exc.SQLAlchemyError:
            return False  # the connection was closed

    def release(self) -> None:
        # Closing the connection releases it too; this only makes it go at once. A connection
        # that died (a lost lock) raises here: it holds nothing to give back.
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            if self.postgresql:
                self.conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            else:
                self.conn.execute(sa.text("DO RELEASE_ALL_LOCKS()"))

    def holder(self) -> dict[str, Any] | None:
        return self._postgresql_holder() if self.postgresql else self._mysql_holder()

    def _postgresql_holder(self) -> dict[str, Any] | None:
        row = self.conn.execute(
            sa.text(
                "SELECT l.pid, a.usename, a.application_name, host(a.client_addr),"
                " a.backend_start, a.state, a.xact_start"
                " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                " AND l.database = (SELECT oid FROM pg_database"
                "  WHERE datname = current_database())"
                " AND l.classid::bigint = :high AND l.objid::bigint = :low"
                " ORDER BY l.pid LIMIT 1"
            ),
            {"high": (self.key >> 32) & 0xFFFFFFFF, "low": self.key & 0xFFFFFFFF},
        ).first()
        if row is None:
            return None
        pid, user, application, client, started, state, xact_start = row
        return {
            "kind": "run_lock",
            "pid": int(pid),
            "user": user,
            "application": application,
            "client": client,
            # PostgreSQL does not record when an advisory lock was taken: its session's start.
            "since": _iso(started),
            "state": state,
            "xact_start": _iso(xact_start),
        }

    def _mysql_holder(self) -> dict[str, Any] | None:
        ident = self.conn.scalar(sa.text("SELECT IS_USED_LOCK(:n)"), {"n": self.name})
        if ident is None:
            return None
        row = self.conn.execute(
            sa.text(
                "SELECT USER, HOST, TIME, COMMAND,"
                " IS_USED_LOCK(CONCAT(:m, ID)) = ID"
                " FROM information_schema.PROCESSLIST WHERE ID = :id"
            ),
            {"id": int(ident), "m": MYSQL_MARKER},
        ).first()
        user, host, seconds, command, ours = row if row is not None else (None,) * 5
        return {
            "kind": "run_lock",
            "pid": int(ident),
            "noun": "connection id",
            "user": user,
            "application": APPLICATION_NAME if ours else None,
            "client": host,
            # PROCESSLIST's TIME: how long its current statement or idle spell has lasted.
            "since": _iso(datetime.now(UTC) - timedelta(seconds=float(seconds)))
            if seconds is not None
            else None,
            "state": command,
        }


def _parse(url: str) -> URL:
    try:
        return parse_database_url(url)
    except BadDatabaseURL as exc:
        raise RunLockError(str(exc)) from None


def _engine(url: URL, timeout: float) -> sa.Engine:
    """Return an unpooled engine with version reads' timeouts, naming itself the run lock."""
    args = _connect_args(url, timeout)
    if url.get_backend_name() == "postgresql" and "application_name" not in url.query:
        args["application_name"] = APPLICATION_NAME
    return sa.create_engine(url, poolclass=NullPool, connect_args=args)


@contextlib.contextmanager
def _translated(secrets: list[str]) -> Iterator[None]:
    """Turn a driver's error in the run lock's own statements into RunLockError."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        raise RunLockError(_reason(exc, secrets)) from None
    except (sa.exc.SQLAlchemyError, OSError, ImportError) as exc:
        raise RunLockError(mask_secrets(f"{type(exc).__name__}: {exc}", secrets)) from None


def _reason(exc: sa.exc.DBAPIError, secrets: list[str]) -> str:
    original = exc.orig if exc.orig is not None else exc
    args: tuple[object, ...] = getattr(original, "args", ())
    text = str(args[1]) if len(args) > 1 and isinstance(args[0], int) else str(original)
    line = text.strip().splitlines()[0] if text.strip() else type(original).__name__
    return mask_secrets(line[:MAX_MESSAGE], secrets)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value is not None else None


def _clock(value: str) -> str:
    """Return an ISO time as people read it: 2026-12-02 13:54:28 UTC."""
    try:
        return f"{datetime.fromisoformat(value).astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    except ValueError:
        return value
