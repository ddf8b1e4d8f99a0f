"""An environment's past runs for its page: each action with how long each revision took."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.urls import reverse

from dashboard.models import Action, RevisionRun
from dashboard.selectors.forecasts import LONG_REVISION_S, seconds_text

TIMELINE_ACTIONS = 10
# Newest revision runs read for the timeline: the (environment, -started_at) index serves them.
TIMELINE_ROWS = 300


@dataclass(frozen=True)
class RunStep:
    """One revision one attempt of a run ran, and how long it took."""

    revision: str
    duration_s: float
    outcome: str
    attempt: int

    @property
    def short(self) -> str:
        return self.revision[:12]

    @property
    def duration_text(self) -> str:
        return seconds_text(self.duration_s)

    @property
    def took_long(self) -> bool:
        return self.duration_s > LONG_REVISION_S


@dataclass(frozen=True)
class PastRun:
    """One action that ran revisions on the environment."""

    action_id: int
    url: str
    direction: str
    target: str
    status: str
    started_at: datetime | None
    steps: list[RunStep]

    @property
    def total_s(self) -> float:
        return sum(step.duration_s for step in self.steps)

    @property
    def total_text(self) -> str:
        return seconds_text(self.total_s)


def environment_timeline(environment: str, *, limit: int = TIMELINE_ACTIONS) -> list[PastRun]:
    """Return the environment's latest runs that ran revisions, newest first: two queries."""
    rows = list(
        RevisionRun.objects.filter(environment=environment)
        .order_by("-started_at", "-id")
        .only("action_id", "revision", "duration_s", "outcome", "attempt", "started_at")[
            :TIMELINE_ROWS
        ]
    )
    by_action: dict[int, list[RevisionRun]] = {}
    for row in rows:
        if row.action_id not in by_action and len(by_action) >= limit:
            continue
        by_action.setdefault(row.action_id, []).append(row)
    actions = Action.objects.filter(pk__in=list(by_action)).only(
        "id", "direction", "target", "status", "started_at"
    )
    found = {action.pk: action for action in actions}
    runs = []
    for action_id, taken in by_action.items():
        action = found.get(action_id)
        if action is None:
            continue
        # Oldest first within a run: the order it ran them, attempt by attempt.
        taken.sort(key=lambda row: (row.started_at, row.pk))
        runs.append(
            PastRun(
                action_id=action_id,
                url=reverse("action-detail", args=[action_id]),
                direction=action.direction,
                target=action.target,
                status=action.status,
                started_at=action.started_at,
                steps=[
                    RunStep(row.revision, row.duration_s, row.outcome, row.attempt) for row in taken
                ],
            )
        )
    return runs
