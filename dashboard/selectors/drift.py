"""Read schema checks for pages, the API and the command line."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import OuterRef, Subquery

from dashboard.models import SchemaCheck


def latest_checks(environments: Iterable[str]) -> dict[str, SchemaCheck]:
    """Return each environment's latest finished schema check, by name (absent: never checked)."""
    names = list(environments)
    newest = (
        SchemaCheck.objects.filter(environment=OuterRef("environment"))
        .exclude(state=SchemaCheck.State.PENDING)
        .order_by("-checked_at", "-id")
        .values("id")[:1]
    )
    rows = SchemaCheck.objects.filter(environment__in=names, id=Subquery(newest))
    return {row.environment: row for row in rows}


def pending_check(environment: str) -> SchemaCheck | None:
    """Return the environment's check that a worker has not finished yet, if any."""
    return (
        SchemaCheck.objects.filter(environment=environment, state=SchemaCheck.State.PENDING)
        .order_by("created_at", "id")
        .first()
    )


def schema_summary(check: SchemaCheck | None) -> dict[str, Any]:
    """Return the API's `schema` object for an environment's latest check."""
    if check is None:
        return {
            "state": SchemaCheck.State.NOT_CHECKED.value,
            "differences": [],
            "checked_at": None,
            "reason": "no schema check has run yet",
            "heads": [],
            "models": None,
        }
    summary: dict[str, Any] = {
        "state": check.state,
        "differences": list(check.differences),
        "checked_at": check.checked_at.isoformat() if check.checked_at else None,
        "reason": check.reason,
        "heads": list(check.heads),
        "models": None,
    }
    if check.models_state:
        summary["models"] = {
            "state": check.models_state,
            "operations": list(check.models_differences),
            "reason": check.models_reason,
        }
    if check.adoption:
        summary["adoption"] = dict(check.adoption)
    return summary
