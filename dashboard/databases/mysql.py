"""MySQL and MariaDB specifics: mark a child's sessions with a named lock, find and kill them.

No driver reads the environment, and what a client may set on its session (connection
attributes, user variables) is invisible to another session when performance_schema is off
(MariaDB's default). A session-level named lock is visible to all: IS_USED_LOCK(name)
returns the id of the connection holding it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from dashboard.databases.connect import Limits

SESSION_NOUN = "connection id"
# ER_LOCK_WAIT_TIMEOUT (1205): a metadata lock past lock_wait_timeout, a row lock past
# innodb_lock_wait_timeout.
LOCK_TIMEOUT_MARKERS: tuple[str, ...] = ("Lock wait timeout exceeded",)
# Drivers whose connect() takes init_command, which SQLAlchemy passes on from the URL query.
_INIT_COMMAND_DRIVERS = ("pymysql", "mysqldb")
_UNKNOWN_THREAD = 1094  # ER_NO_SUCH_THREAD: gone already


def child_url(url: URL, tag: str, limits: Limits | None = None) -> URL | None:
    """Return url with an init_command marking (and bounding) each session, or None if it cannot."""
    if unbounded_reason(url):
        return None  # a project's own init_command is kept: these sessions go untagged
    # One lock per connection (its id in the name): a second connection of the child must
    # not wait for the first one's lock, and each holder is found by its own id.
    lock = f"GET_LOCK(CONCAT({_literal(lock_prefix(tag))}, CONNECTION_ID()), 0)"
    if limits is None:
        return url.update_query_dict({"init_command": f"DO {lock}"})
    # One statement (a driver runs init_command as one): both waits in whole seconds, at least 1.
    seconds = max(1, math.ceil(limits.lock_timeout))
    statement = ""
    if limits.statement_timeout_ms is not None:
        # MariaDB alone runs what /*M! ... */ holds; MySQL's max_execution_time bounds only SELECT.
        statement = (
            f" /*M!, SESSION max_statement_time = {limits.statement_timeout_ms / 1000:.3f} */"
        )
    command = (
        f"SET SESSION lock_wait_timeout = {seconds},"
        f" SESSION innodb_lock_wait_timeout = {seconds}{statement},"
        f" @migration_dashboard_tag = {lock}"
    )
    return url.update_query_dict({"init_command": command})


def unbounded_reason(url: URL) -> str:
    """Say why a child's sessions on url get no limits and no tag, or return ""."""
    # Two init_commands would need multi-statements, which a project's URL may not allow.
    if "init_command" in url.query:
        return "the URL has its own init_command"
    driver = url.get_driver_name()
    if driver not in _INIT_COMMAND_DRIVERS:
        return f"driver {driver} ignores them (only pymysql and mysqldb take an init_command)"
    return ""


def lock_prefix(tag: str) -> str:
    """Return the start of the named lock a tagged session holds; its connection id follows."""
    return f"{tag} #"


def tagged_sessions(conn: sa.Connection, tag: str) -> list[int]:
    """Return the ids of connections on this database holding tag's lock, other than ours."""
    rows = conn.execute(
        sa.text(
            "SELECT ID FROM information_schema.PROCESSLIST"
            " WHERE ID <> CONNECTION_ID() AND DB <=> DATABASE()"
            " AND IS_USED_LOCK(CONCAT(:prefix, ID)) = ID ORDER BY ID"
        ),
        {"prefix": lock_prefix(tag)},
    )
    return [int(ident) for ident in rows.scalars()]


def cancel(conn: sa.Connection, ident: int) -> None:
    """Stop the connection's current statement."""
    _kill(conn, f"KILL QUERY {int(ident)}")


def terminate(conn: sa.Connection, ident: int) -> None:
    """End the connection: its transaction rolls back and its locks go."""
    _kill(conn, f"KILL {int(ident)}")


def _kill(conn: sa.Connection, statement: str) -> None:
    try:
        conn.exec_driver_sql(statement)
    except DBAPIError as exc:
        args = getattr(exc.orig, "args", ())
        if not (args and args[0] == _UNKNOWN_THREAD):
            raise


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
