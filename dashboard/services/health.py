"""Health of the dashboard itself: can its database be read and written, does a worker live."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connection
from django.db.migrations.recorder import MigrationRecorder
from django.db.models import F

from dashboard.selectors.workers import WorkerLiveness, worker_liveness
from dashboard.services import brief

logger = logging.getLogger(__name__)

# How long the write probe waits for a lock before it calls the database not writable.
PROBE_WAIT_MS = 250


class _Probed(Exception):
    """The probe's write went through; raised to roll it back."""


@dataclass(frozen=True)
class DatabaseState:
    """Whether the dashboard's own database answers a read and would take a write now."""

    readable: bool
    writable: bool

    def as_json(self) -> dict[str, bool]:
        return {"readable": self.readable, "writable": self.writable}


@dataclass(frozen=True)
class Health:
    """The dashboard's database and workers, and what keeps it from being ready."""

    database: DatabaseState
    workers: WorkerLiveness | None  # None when the database could not be read

    @property
    def problems(self) -> list[str]:
        """Say what keeps the dashboard from working fully, one sentence each."""
        found = []
        if not self.database.readable:
            found.append("the dashboard's database cannot be read")
        elif not self.database.writable:
            found.append("the dashboard's database cannot be written")
        if self.workers is not None and not self.workers.ok:
            found.append(f"no worker has been seen within {self.workers.limit:g} s")
        return found

    def as_json(self) -> dict[str, Any]:
        """Return what /healthz and /readyz answer."""
        problems = self.problems
        return {
            "status": "ok" if not problems else "degraded",
            "database": self.database.as_json(),
            "workers": self.workers.as_json() if self.workers is not None else None,
            "problems": problems,
        }


def health_check() -> Health:
    """Read and probe-write the dashboard's database, and read the workers' beats."""
    database = database_state()
    if not database.readable:
        return Health(database=database, workers=None)
    try:
        workers = worker_liveness()
    except DatabaseError:
        logger.warning("could not read the workers' beats", exc_info=True)
        workers = None
    return Health(database=database, workers=workers)


def database_state() -> DatabaseState:
    """Say whether the dashboard's database answers a read, and takes a write within 250 ms."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        logger.warning("the dashboard's database cannot be read", exc_info=True)
        return DatabaseState(readable=False, writable=False)
    return DatabaseState(readable=True, writable=_takes_a_write())


def _takes_a_write() -> bool:
    """Rewrite one row of Django's tiny migrations table as it is, and roll it back."""
    # A real write (the lock, the journal, a read-only server) that leaves no row behind.
    records = MigrationRecorder.Migration.objects
    first = records.order_by("pk").values("pk")[:1]
    try:
        with brief.transaction_waiting_at_most(PROBE_WAIT_MS):
            records.filter(pk__in=first).update(app=F("app"))
            raise _Probed
    except _Probed:
        return True
    except DatabaseError:
        logger.warning("the dashboard's database cannot be written", exc_info=True)
        return False
