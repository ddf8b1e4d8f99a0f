"""Find the invalid indexes a failed run can leave behind on PostgreSQL (CREATE INDEX CONCURRENTLY)."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from dashboard.config import BadDatabaseURL, parse_database_url, url_secrets, with_installed_driver
from dashboard.databases.versions import _engine, mask_secrets

logger = logging.getLogger(__name__)

MAX_INDEXES = 100  # a page lists them; more means something else went wrong

# A CREATE INDEX CONCURRENTLY that failed (a duplicate for a unique one, a cancel, a lock or
# statement timeout) leaves its index behind, marked invalid: never used by a query, yet
# kept up to date by every write, and in the way of building it again under its name.
_INVALID = sa.text(
    """
SELECT t.relname AS table_name, i.relname AS index_name,
       pg_get_indexdef(x.indexrelid) AS definition
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE NOT x.indisvalid AND n.nspname = current_schema()
ORDER BY t.relname, i.relname
LIMIT :most
"""
)


def invalid_indexes(url: str, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """List the current schema's invalid indexes as {table, index, definition}; [] elsewhere, never raise."""
    try:
        parsed = parse_database_url(with_installed_driver(url))
    except BadDatabaseURL:
        return []
    if parsed.get_backend_name() != "postgresql":
        return []
    secrets = url_secrets(parsed)
    try:
        with _engine(parsed, timeout).connect() as conn:
            rows = conn.execute(_INVALID, {"most": MAX_INDEXES}).all()
            conn.rollback()
    except Exception as exc:  # the action keeps its error; the log says why none were listed
        logger.warning(
            "could not list invalid indexes: %s", mask_secrets(_first_line(exc), secrets)
        )
        return []
    return [
        {"table": row.table_name, "index": row.index_name, "definition": row.definition or ""}
        for row in rows
    ]


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
