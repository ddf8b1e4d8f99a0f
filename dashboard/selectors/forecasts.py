"""How long a plan's revisions took where they ran before, and what the whole plan may take."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median

from django.db.models import F, Window
from django.db.models.functions import RowNumber

from dashboard.models import Action, RevisionRun


def _plan_revisions(action: Action) -> list[str]:
    return [rev for rev in action.plan if isinstance(rev, str)] if action.plan else []


def _newest_succeeded(project: str, direction: str, revisions: Sequence[str]) -> list[RevisionRun]:
    """Return the newest successful run of each plan revision per environment, one query."""
    if not revisions:
        return []
    newest = Window(
        RowNumber(),
        partition_by=[F("revision"), F("environment")],
        order_by=[F("started_at").desc(), F("id").desc()],
    )
    rows = (
        RevisionRun.objects.filter(
            project=project,
            direction=direction,
            revision__in=list(revisions),
            outcome=RevisionRun.Outcome.SUCCEEDED,
        )
        .annotate(newest=newest)
        .filter(newest=1)
        .only("environment", "revision", "duration_s", "finished_at", "started_at")
    )
    return list(rows)


def plan_forecast_seconds(action: Action) -> float | None:
    """Return the forecast for the action's whole plan in seconds; None when none of it ever ran."""
    if action.direction == Action.Direction.STAMP:
        return 0.0
    revisions = _plan_revisions(action)
    if not revisions:
        return 0.0
    by_revision: dict[str, list[float]] = {}
    for row in _newest_succeeded(action.project, action.direction, revisions):
        by_revision.setdefault(row.revision, []).append(row.duration_s)
    if not by_revision:
        return None
    return float(sum(median(times) for times in by_revision.values()))
