"""Record how long each revision of a run took, from the runner's own step lines."""

from __future__ import annotations

import logging

from django.db import transaction

from dashboard.models import Action, RevisionRun
from dashboard.runner.monitor import AttemptSteps, StepMark

logger = logging.getLogger(__name__)

_OUTCOMES = {
    Action.Status.SUCCEEDED: RevisionRun.Outcome.SUCCEEDED,
    Action.Status.FAILED: RevisionRun.Outcome.FAILED,
    Action.Status.INTERRUPTED: RevisionRun.Outcome.INTERRUPTED,
    Action.Status.CANCELLED: RevisionRun.Outcome.CANCELLED,
}


def outcome_of(status: str) -> str:
    """Return the run-time outcome for an action's ending status (anything else failed)."""
    return _OUTCOMES.get(status, RevisionRun.Outcome.FAILED)  # type: ignore[call-overload]


def revision_of(mark: StepMark, plan: list[str]) -> str:
    """Return the revision a step runs: an upgrade's target, a downgrade's source."""
    step = mark.step
    named = step.to_revisions if step.direction == "upgrade" else step.from_revisions
    in_plan = [rev for rev in named if rev in plan]
    return (in_plan or list(named) or ["?"])[0]


def runs_of(action: Action, taken: AttemptSteps, outcome: str) -> list[RevisionRun]:
    """Return the rows for one attempt: each step ends at the next one's line, the last at exit.

    Steps before the last completed, so they succeeded; the last gets the attempt's outcome.
    """
    plan = [rev for rev in action.plan if isinstance(rev, str)] if action.plan else []
    rows = []
    marks = taken.marks
    for index, mark in enumerate(marks):
        last = index == len(marks) - 1
        end_at, end_clock = (
            (taken.ended_at, taken.ended_clock)
            if last
            else (marks[index + 1].at, marks[index + 1].clock)
        )
        rows.append(
            RevisionRun(
                action_id=action.pk,
                environment=action.environment,
                project=action.project,
                revision=revision_of(mark, plan)[:255],
                direction=mark.step.direction,
                attempt=min(taken.attempt, 32767),
                started_at=mark.at,
                finished_at=end_at,
                duration_s=max(0.0, end_clock - mark.clock),
                outcome=outcome if last else RevisionRun.Outcome.SUCCEEDED,
            )
        )
    return rows


def runtimes_record(action: Action, taken: AttemptSteps, outcome: str) -> int:
    """Store one attempt's revision times; never raises: a run's ending matters more.

    A stamp runs no revision, so it records nothing. Returns the number of rows stored.
    """
    if action.direction == Action.Direction.STAMP or not taken.marks:
        return 0
    try:
        rows = runs_of(action, taken, outcome)
        with transaction.atomic():
            RevisionRun.objects.bulk_create(rows)
    except Exception:
        logger.exception("could not record the revision times of action %s", action.pk)
        return 0
    return len(rows)
