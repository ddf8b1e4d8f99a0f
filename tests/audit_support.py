"""Edit audit rows behind the ORM's back, as someone with direct database access could."""

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection
from django.db.backends.utils import CursorWrapper

TRIGGER = "dashboard_auditevent_append_only"


@contextmanager
def behind_the_orms_back() -> Iterator[CursorWrapper]:
    """Yield a cursor that may change audit rows; on PostgreSQL the trigger is off meanwhile."""
    postgres = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        if postgres:
            # A superuser can do this; the hash chain is what still catches the edit. Deferred
            # foreign-key checks must fire first, or PostgreSQL refuses to alter the table.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(f"ALTER TABLE dashboard_auditevent DISABLE TRIGGER {TRIGGER}")
        try:
            yield cursor
        finally:
            if postgres:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cursor.execute(f"ALTER TABLE dashboard_auditevent ENABLE TRIGGER {TRIGGER}")
                cursor.execute("SET CONSTRAINTS ALL DEFERRED")
