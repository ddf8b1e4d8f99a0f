"""Run a fleet's discovery query (names_query, schemas_query) read-only, within a deadline."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from dashboard.config import BadDatabaseURL, parse_database_url, url_secrets, with_installed_driver
from dashboard.databases import versions
from dashboard.databases.connect import mask_secrets

# More rows than this is a query that matches far too much (every database, a join gone
# wrong): refused as an error, so the members stay as they were.
MAX_ROWS = 10_000


class DiscoveryError(Exception):
    """The query could not be run or answered; the message holds no password."""


def query_names(url: str, query: str, *, timeout: float = 5.0) -> list[str]:
    """Return the first column of each row the query returns, as text; raise DiscoveryError."""
    try:
        parsed = parse_database_url(with_installed_driver(url))
    except BadDatabaseURL as exc:
        raise DiscoveryError(str(exc)) from None
    box: list[list[str] | DiscoveryError] = []

    def run() -> None:
        try:
            box.append(_run(parsed, query, timeout))
        except DiscoveryError as exc:
            box.append(exc)

    # A daemon thread, as for version reads: a query stuck inside a driver is abandoned at the
    # deadline and never holds up the worker.
    worker = threading.Thread(target=run, name="fleet-discovery", daemon=True)
    worker.start()
    worker.join(timeout + versions.DEADLINE_GRACE)
    if not box:
        raise DiscoveryError(versions._timed_out(timeout))
    if isinstance(box[0], DiscoveryError):
        raise box[0]
    return box[0]


def _run(url: sa.URL, query: str, timeout: float) -> list[str]:
    backend = url.get_backend_name()
    try:
        # The version reads' unpooled engine: driver timeouts, PostgreSQL sessions read-only.
        with versions._engine(url, timeout).connect() as conn:
            if backend == "postgresql":
                conn.execute(sa.text("SET TRANSACTION READ ONLY"))
            elif backend in ("mysql", "mariadb"):
                conn.execute(sa.text("SET SESSION TRANSACTION READ ONLY"))
            # The driver's own cursor and no parameters: a LIKE 'tenant_%' or a ':' in the
            # query is the query's, not a placeholder for SQLAlchemy or the driver to fill.
            cursor = conn.connection.cursor()
            try:
                cursor.execute(query)
                if cursor.description is None:
                    raise DiscoveryError("the query returns no rows (is it a SELECT?)")
                rows = cursor.fetchmany(MAX_ROWS + 1)
            finally:
                cursor.close()
            conn.rollback()
    except DiscoveryError:
        raise
    except Exception as exc:  # every failure becomes a message without the password
        raise DiscoveryError(_describe(exc, url, timeout)) from None
    if len(rows) > MAX_ROWS:
        raise DiscoveryError(f"the query returned more than {MAX_ROWS} rows")
    return [versions._as_text(row[0]) if len(row) else "" for row in rows]


def _describe(exc: Exception, url: sa.URL, timeout: float) -> str:
    """Return why the query failed: the version reads' words for connections, else the driver's."""
    original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    code = getattr(original, "pgcode", None)
    if code == "42501":
        return "the query: permission denied: " + mask_secrets(
            versions._first_line(original), url_secrets(url)
        )
    if code == "25006":  # read_only_sql_transaction
        return "the query tried to write; discovery queries run read-only"
    target = versions._Target(url, "alembic_version", None, timeout)
    _kind, message = versions._describe(exc, target, "the query")
    return message
