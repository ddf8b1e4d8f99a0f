"""PostgreSQL specifics: tag a child's sessions through libpq, find and stop them by that tag."""

from __future__ import annotations

import re
from collections.abc import Mapping

import sqlalchemy as sa

SESSION_NOUN = "backend pid"

_OPTION_SPECIAL = re.compile(r"([\\\s])")


def child_env(tag: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Return the libpq variables that name every session of a child process tag."""
    # PGOPTIONS reaches the server even when the URL names no options; PGAPPNAME still
    # applies when the URL's own `options` replaces PGOPTIONS. A URL's application_name wins.
    escaped = _OPTION_SPECIAL.sub(r"\\\1", tag)  # PGOPTIONS splits on unescaped spaces
    option = f"-c application_name={escaped}"
    inherited = environ.get("PGOPTIONS", "").strip()
    return {
        "PGOPTIONS": f"{inherited} {option}" if inherited else option,
        "PGAPPNAME": tag,
    }


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
