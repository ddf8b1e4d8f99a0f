"""Transactions on the dashboard's own database that wait only briefly for a lock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection, transaction

_SET_TIMEOUTS = (
    "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)"
)


@contextmanager
def transaction_waiting_at_most(ms: int) -> Iterator[None]:
    """Open a transaction whose statements give up after waiting ms milliseconds for a lock.

    For writes that must never hold up a read or a health check: the default waits are
    long (20 s on SQLite, forever for a PostgreSQL row lock) so that real work gets through.
    """
    if connection.vendor == "sqlite":
        # Transactions begin IMMEDIATE (settings): the wait happens at BEGIN, so set it first.
        with _sqlite_busy_timeout(ms), transaction.atomic():
            yield
        return
    with transaction.atomic():
        if connection.vendor != "postgresql":
            yield
            return
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
            )
            before = cursor.fetchone()
            cursor.execute(_SET_TIMEOUTS, [f"{ms}ms", f"{4 * ms}ms"])
        yield
        # Local to this transaction, or to this savepoint of a caller's transaction (undone
        # with it when it rolls back): put back what the caller's transaction had.
        with connection.cursor() as cursor:
            cursor.execute(_SET_TIMEOUTS, list(before))


@contextmanager
def _sqlite_busy_timeout(ms: int) -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout")
        (before,) = cursor.fetchone()
        cursor.execute(f"PRAGMA busy_timeout = {int(ms)}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA busy_timeout = {int(before)}")
