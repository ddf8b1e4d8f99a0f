"""What /metrics reports, read from the dashboard's own tables: one bounded query per kind."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count

from dashboard.config import ConfigError, current_config
from dashboard.models import Action, SchemaCheck, Snapshot, WorkerBeat
from dashboard.selectors import drift as drift_selectors
from dashboard.selectors import status as status_selectors

# Every state an environment's gauge has a series for: the snapshot states, then never read.
STATES = (*(str(state) for state in Snapshot.State), status_selectors.UNREAD)
# Beats are swept after a day; this bounds the scrape if many short-lived workers left theirs.
WORKERS_SHOWN = 500
SCHEMA_COLUMNS = ("id", "environment", "project", "state", "differences", "checked_at")


@dataclass(frozen=True)
class EnvironmentReading:
    """One environment (or fleet member) as its latest snapshot and conclusive check say."""

    environment: str
    project: str
    fleet: str  # "" for an environment that is no fleet's member
    state: str  # a snapshot state, or "unread"
    pending: int | None  # None where nothing can be planned (unreachable, unknown, unread)
    read_at: datetime | None
    schema_differences: int | None  # None where no check could compare (or none ran)


@dataclass(frozen=True)
class EnvironmentReadings:
    """Every configured environment's reading, or why the config cannot be read."""

    environments: tuple[EnvironmentReading, ...]
    config_error: str | None


def environment_readings() -> EnvironmentReadings:
    """Return every environment's state, pending count, last read and schema differences."""
    try:
        config = current_config()
    except ConfigError as exc:
        return EnvironmentReadings(environments=(), config_error=str(exc))
    envs = config.ordered_environments()
    latest = status_selectors.latest_of(envs)
    differences = schema_differences({env.name: env.project for env in envs})
    readings = []
    for env in envs:
        snapshot = latest.get(env.name)
        state = status_selectors.member_state(snapshot)
        planned = snapshot is not None and snapshot.state in status_selectors.PLANNED_STATES
        readings.append(
            EnvironmentReading(
                environment=env.name,
                project=env.project,
                fleet=env.fleet or "",
                state=state,
                pending=len(snapshot.pending) if planned and snapshot is not None else None,
                read_at=snapshot.read_at if snapshot is not None else None,
                schema_differences=differences.get(env.name),
            )
        )
    return EnvironmentReadings(environments=tuple(readings), config_error=None)


def schema_differences(projects: dict[str, str]) -> dict[str, int]:
    """Return how many differences each environment's latest conclusive check found, by name."""
    checks = drift_selectors.latest_checks(projects, conclusive=True, columns=SCHEMA_COLUMNS)
    found: dict[str, int] = {}
    for name, check in checks.items():
        # A check made while the environment belonged to another project compared another history.
        if check.project != projects[name]:
            continue
        if check.state == SchemaCheck.State.IN_SYNC:
            found[name] = 0
        elif isinstance(check.differences, Sequence) and not isinstance(check.differences, str):
            found[name] = len(check.differences)
    return found


def action_counts() -> dict[str, int]:
    """Return how many actions are in each status, every status included."""
    counted = dict.fromkeys(map(str, Action.Status), 0)
    rows = Action.objects.order_by().values_list("status").annotate(n=Count("id"))
    for status, n in rows:
        counted[status] = n
    return counted


def queue_depth() -> int:
    """Return how many tasks wait for a worker now (due, not yet claimed)."""
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.ready().count()


def worker_beats() -> list[tuple[str, datetime]]:
    """Return each worker's name (host:pid) and its last beat, newest first."""
    beats = WorkerBeat.objects.order_by("-seen_at").values_list("name", "seen_at")
    return list(beats[:WORKERS_SHOWN])
