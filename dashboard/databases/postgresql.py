"""PostgreSQL specifics: tag and bound a child's sessions through libpq, find and stop them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import URL

if TYPE_CHECKING:
    from dashboard.databases.connect import Limits

SESSION_NOUN = "backend pid"
# How psycopg2 (and Alembic's traceback) says a statement gave up at lock_timeout (55P03).
LOCK_TIMEOUT_MARKERS: tuple[str, ...] = (
    "LockNotAvailable",
    "canceling statement due to lock timeout",
)

_OPTION_SPECIAL = re.compile(r"([\\\s])")


def child_env(tag: str, environ: Mapping[str, str], limits: Limits | None = None) -> dict[str, str]:
    """Return the libpq variables that name (and bound) every session of a child process tag."""
    # PGOPTIONS reaches the server even when the URL names no options; PGAPPNAME still
    # applies when the URL's own `options` replaces PGOPTIONS. A URL's application_name wins.
    escaped = _OPTION_SPECIAL.sub(r"\\\1", tag)  # PGOPTIONS splits on unescaped spaces
    option = " ".join([*limit_options(limits), f"-c application_name={escaped}"])
    # Ours come last: of two settings of one name, the server keeps the later one.
    inherited = environ.get("PGOPTIONS", "").strip()
    return {
        "PGOPTIONS": f"{inherited} {option}" if inherited else option,
        "PGAPPNAME": tag,
    }


def child_url(url: URL, limits: Limits | None) -> URL | None:
    """Return url with limits added to its own `options`, or None when it has none to extend."""
    existing = url.query.get("options")
    if limits is None or not isinstance(existing, str):
        return None  # PGOPTIONS carries them
    return url.update_query_dict({"options": " ".join([existing.strip(), *limit_options(limits)])})


def limit_options(limits: Limits | None) -> list[str]:
    """Return the `-c name=value` options that set limits on a session."""
    if limits is None:
        return []
    options = [f"-c lock_timeout={limits.lock_timeout_ms}ms"]
    if limits.statement_timeout_ms is not None:
        options.append(f"-c statement_timeout={limits.statement_timeout_ms}ms")
    return options


def tagged_sessions(conn: sa.Connection, tag: str) -> list[int]:
    """Return the pids of client backends on this database named tag, other than ours."""
    rows = conn.execute(
        sa.text(
            "SELECT pid FROM pg_stat_activity"
            " WHERE application_name = :tag AND datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " ORDER BY pid"
        ),
        {"tag": tag},
    )
    return [int(pid) for pid in rows.scalars()]


def cancel(conn: sa.Connection, ident: int) -> None:
    """Cancel the backend's current statement (false when it is gone already)."""
    conn.execute(sa.text("SELECT pg_cancel_backend(:pid)"), {"pid": ident})


def terminate(conn: sa.Connection, ident: int) -> None:
    """End the backend: its transaction rolls back and its locks go."""
    conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": ident})
