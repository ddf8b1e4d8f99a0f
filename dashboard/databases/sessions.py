"""Tag and bound the sessions an action's Alembic child opens, and stop the ones it leaves behind.

A statement keeps running in the server after its client died (PostgreSQL notices only when
it next talks to the client), so a cancelled or orphaned run must be stopped server-side.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from dashboard.config import BadDatabaseURL, parse_database_url, url_secrets
from dashboard.databases import mysql, postgresql
from dashboard.databases.connect import (
    Limits,
    _connect_args,
    mask_secrets,
)

TAG_PREFIX = "migration-dashboard action"
CANCEL_GRACE = 1.0  # seconds a cancelled statement gets to end before its session is terminated
TERMINATE_WAIT = 5.0  # seconds a terminated session gets to go away before we say it did not
POLL_INTERVAL = 0.05
MAX_REASON = 300


class _Dialect(Protocol):
    """What one dialect module offers: find, cancel and terminate tagged sessions."""

    SESSION_NOUN: str
    LOCK_TIMEOUT_MARKERS: tuple[str, ...]

    def tagged_sessions(self, conn: sa.Connection, tag: str) -> list[int]: ...

    def cancel(self, conn: sa.Connection, ident: int) -> None: ...

    def terminate(self, conn: sa.Connection, ident: int) -> None: ...


@dataclass(frozen=True)
class StopReport:
    """Which tagged sessions were found, and why some of them may still be there."""

    found: tuple[int, ...]
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Say whether no tagged session is known to remain."""
        return not self.failures


def action_tag(action_id: int) -> str:
    """Return the name every session of the action's Alembic child carries."""
    return f"{TAG_PREFIX} {action_id}"


def tag_child(
    url: str, tag: str, environ: Mapping[str, str], *, limits: Limits | None = None
) -> tuple[str, dict[str, str]]:
    """Return the URL and the variables that make every session the child opens carry tag.

    PostgreSQL: libpq's PGOPTIONS and PGAPPNAME, so env.py and the URL stay as approved.
    MySQL/MariaDB: no driver reads the environment, so the child's URL gets an init_command.
    The sessions also get limits (by default those environ carries, see Limits.environ):
    lock_timeout and statement_timeout on PostgreSQL (also in a URL's own `options`, which
    replace PGOPTIONS); lock_wait_timeout and innodb_lock_wait_timeout on MySQL/MariaDB.
    """
    try:
        parsed = parse_database_url(url)
    except BadDatabaseURL:
        return url, {}
    limits = limits if limits is not None else Limits.from_environ(environ)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        env = postgresql.child_env(tag, environ, limits)
        bounded = postgresql.child_url(parsed, limits)
        return (url if bounded is None else bounded.render_as_string(hide_password=False)), env
    if backend in ("mysql", "mariadb"):
        tagged = mysql.child_url(parsed, tag, limits)
        return (url if tagged is None else tagged.render_as_string(hide_password=False)), {}
    return url, {}


def unbounded_reason(url: str) -> str:
    """Say why the limits (and tag) of tag_child cannot reach a child's sessions, or return ""."""
    try:
        parsed = parse_database_url(url)
    except BadDatabaseURL:
        return ""
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        return mysql.unbounded_reason(parsed)
    return ""


def lock_timed_out(url: str, lines: Iterable[str]) -> bool:
    """Say whether a child's output says a statement gave up waiting for a lock."""
    try:
        dialect = _dialect(parse_database_url(url).get_backend_name())
    except BadDatabaseURL:
        return False
    if dialect is None:
        return False
    return any(marker in line for line in lines for marker in dialect.LOCK_TIMEOUT_MARKERS)


def stop_sessions(
    url: str,
    tag: str,
    *,
    timeout: float = 5.0,
    cancel_grace: float = CANCEL_GRACE,
    terminate_wait: float = TERMINATE_WAIT,
) -> StopReport:
    """Cancel, then terminate, every session on url's database that carries tag; never raise."""
    try:
        parsed = parse_database_url(url)
    except BadDatabaseURL as exc:
        return StopReport(found=(), failures=(f"could not look for its sessions: {exc}",))
    dialect = _dialect(parsed.get_backend_name())
    if dialect is None:
        return StopReport(found=(), failures=())  # SQLite: the file lock died with the child
    secrets = url_secrets(parsed)
    engine = sa.create_engine(
        parsed, poolclass=NullPool, connect_args=_connect_args(parsed, timeout)
    )
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            found = dialect.tagged_sessions(conn, tag)
            if not found:
                return StopReport(found=(), failures=())
            reasons: dict[int, str] = {}
            _signal(conn, dialect.cancel, found, reasons, secrets)
            left = _wait_gone(conn, dialect, tag, cancel_grace)
            _signal(conn, dialect.terminate, left, reasons, secrets)
            left = _wait_gone(conn, dialect, tag, terminate_wait)
    except Exception as exc:  # the caller records this instead of a traceback
        return StopReport(
            found=(), failures=(f"could not look for its sessions: {_reason(exc, secrets)}",)
        )
    finally:
        engine.dispose()
    failures = tuple(
        f"could not stop {dialect.SESSION_NOUN} {ident}: "
        + reasons.get(ident, f"still there {terminate_wait:g} s after it was terminated")
        for ident in left
    )
    return StopReport(found=tuple(found), failures=failures)


def _dialect(backend: str) -> _Dialect | None:
    if backend == "postgresql":
        return postgresql
    if backend in ("mysql", "mariadb"):
        return mysql
    return None


def _signal(
    conn: sa.Connection,
    send: Callable[[sa.Connection, int], None],
    idents: list[int],
    reasons: dict[int, str],
    secrets: list[str],
) -> None:
    """Send cancel or terminate to each session, remembering why the server refused one."""
    for ident in idents:
        try:
            send(conn, ident)
        except DBAPIError as exc:
            reasons[ident] = _reason(exc, secrets)


def _wait_gone(conn: sa.Connection, dialect: _Dialect, tag: str, patience: float) -> list[int]:
    """Return the tagged sessions still there once none is left or patience ran out."""
    deadline = time.monotonic() + patience
    while True:
        left = dialect.tagged_sessions(conn, tag)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(POLL_INTERVAL)


def _reason(exc: BaseException, secrets: list[str]) -> str:
    """Return the driver's first line about exc, password removed."""
    original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    args: tuple[object, ...] = getattr(original, "args", ())
    mysql_style = len(args) > 1 and isinstance(args[0], int)  # (code, message)
    text = str(args[1]) if mysql_style else str(original).strip()
    line = text.splitlines()[0].strip() if text else type(original).__name__
    if len(line) > MAX_REASON:
        line = line[: MAX_REASON - 3] + "..."
    return mask_secrets(line, secrets)
