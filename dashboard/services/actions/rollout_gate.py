"""Whether a fleet member's queued run may start: its rollout must still be running."""

from __future__ import annotations

from django.utils import timezone

from dashboard import audit
from dashboard.models import Action, Rollout


def member_may_start(action: Action) -> bool:
    """Say whether a queued member may start; put it back (paused) or cancel it otherwise.

    Called by the run's claim inside its transaction, with the action's row locked.
    """
    if action.rollout_id is None:
        return True
    status = Rollout.objects.filter(pk=action.rollout_id).values_list("status", flat=True).first()
    if status == Rollout.Status.RUNNING:
        return True
    if status == Rollout.Status.PAUSED:
        # Start no new member while paused: it waits, approved, for the resume.
        Action.objects.filter(pk=action.pk, status=Action.Status.QUEUED).update(
            status=Action.Status.APPROVED, queued_at=None
        )
    else:
        Action.objects.filter(pk=action.pk, status=Action.Status.QUEUED).update(
            status=Action.Status.CANCELLED,
            finished_at=timezone.now(),
            error=f"rollout #{action.rollout_id} is {status}: this member was not started",
        )
        audit.record(
            "action.cancelled",
            actor_name=audit.SYSTEM,
            environment=action.environment,
            action_id=action.pk,
            payload={"from_status": "queued", "rollout": action.rollout_id},
        )
    action.refresh_from_db()
    return False
