"""Set aside requests whose plan no longer holds: nothing of theirs ran, and nothing will.

A plan starts from the heads its environment had when it was made. When those heads move
(another action ran, someone ran Alembic by hand), the code it pins changes, or the action it
was queued behind did not succeed, the plan can no longer run: the action becomes superseded,
with the reason, instead of waiting for an approval that would fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from dashboard import audit
from dashboard.config import ConfigError, DashboardConfig, current_config
from dashboard.models import Action, Approval
from dashboard.services import holding
from dashboard.services.holding import OPEN, aheads_of, open_on, plan_problem, plan_problems

__all__ = [
    "action_supersede",
    "action_supersede_if_unheld",
    "actions_release_behind",
    "actions_supersede_after",
    "actions_supersede_moved",
    "actions_supersede_stale",
    "plan_problem",
]


def action_supersede(*, action_id: int, reason: str) -> Action | None:
    """Mark an action that has not started superseded, and those queued behind it; audit each."""
    chain = _supersede_chain(action_id, reason)
    return chain[0] if chain else None


def _supersede_chain(action_id: int, reason: str) -> list[Action]:
    """Supersede one action, then whatever waited behind it; return them, that one first."""
    done = _supersede_one(action_id, reason)
    return [done, *_supersede_behind(done)] if done is not None else []


def _supersede_one(action_id: int, reason: str) -> Action | None:
    """Mark one action that has not started superseded, with the reason, and audit it."""
    with transaction.atomic():
        action = Action.objects.select_for_update().filter(pk=action_id, status__in=OPEN).first()
        if action is None:
            return None  # it started, finished or went away meanwhile
        before = action.status
        action.status = Action.Status.SUPERSEDED
        action.finished_at = timezone.now()
        action.error = f"superseded: {reason}; nothing ran: request it again"
        action.save(update_fields=["status", "finished_at", "error"])
        audit.record(
            "action.superseded",
            actor_name=audit.SYSTEM,
            environment=action.environment,
            action_id=action.pk,
            payload={"reason": reason, "from_status": before},
        )
    return action


def actions_supersede_moved(
    *, environment: str, heads: Sequence[str], read_at: datetime | None = None
) -> list[Action]:
    """Supersede the environment's open actions whose plans start elsewhere than heads."""
    if Action.objects.filter(environment=environment).running().exists():
        return []  # mid-run heads are a passing state; the run's ending reads them again
    pending = open_on(environment)
    aheads = aheads_of(pending)
    superseded = []
    for action in pending:
        reason = plan_problem(
            action, heads=heads, read_at=read_at, ahead=aheads.get(action.queued_behind_id or 0)
        )
        if reason:
            superseded += _supersede_chain(action.pk, reason)
    return superseded


def actions_supersede_after(*, action_id: int) -> list[Action]:
    """After an action ended: supersede the plans its success moved, or that were behind it.

    After a success, the approved ones that waited behind it are queued.
    """
    action = Action.objects.filter(pk=action_id).first()
    if action is None or not action.is_finished:
        return []
    if action.status != Action.Status.SUCCEEDED:
        return _supersede_behind(action)
    superseded = []
    if action.after_heads is not None:
        superseded = actions_supersede_moved(
            environment=action.environment, heads=action.after_heads, read_at=action.finished_at
        )
    actions_release_behind(action_id=action.pk)
    return superseded


def actions_supersede_stale(*, config: DashboardConfig | None = None) -> list[Action]:
    """Supersede every open action whose plan no longer holds, from what is known without reads.

    The code is fingerprinted now; the heads are the newest successful snapshot's.
    """
    pending = list(Action.objects.filter(status__in=OPEN).order_by("created_at", "pk"))
    try:
        config = config or current_config()
    except ConfigError:
        return []
    superseded = []
    for action_id, reason in plan_problems(pending, config).items():
        superseded += _supersede_chain(action_id, reason)
    return superseded


def action_supersede_if_unheld(*, action_id: int) -> str:
    """Supersede one open action whose code changed or whose one ahead failed; return why, or ""."""
    action = Action.objects.filter(pk=action_id, status__in=OPEN).first()
    if action is None:
        return ""
    try:
        config = current_config()
    except ConfigError:
        fingerprint = None  # the caller's own check of the code says what is wrong
    else:
        fingerprint = holding.project_fingerprints(config, {action.project}).get(action.project)
    reason = plan_problem(action, fingerprint=fingerprint, ahead=action.queued_behind)
    if reason and action_supersede(action_id=action.pk, reason=reason) is not None:
        return reason
    return ""


def actions_release_behind(*, action_id: int | None = None) -> list[Action]:
    """Queue the approved actions that waited behind this one (any, without an id) once it succeeded.

    Only the status moves: the caller hands them to the task queue (a run's ending enqueues
    the environment's next queued action; housekeeping those whose queue entry is missing).
    """
    waiting = Action.objects.filter(
        status=Action.Status.APPROVED,
        queued_behind__isnull=False,
        queued_behind__status=Action.Status.SUCCEEDED,
    )
    if action_id is not None:
        waiting = waiting.filter(queued_behind_id=action_id)
    released = []
    for follower in waiting.order_by("pk"):
        with transaction.atomic():
            now = timezone.now()
            # Only the first of the run's ending, an approval's commit and housekeeping moves it.
            moved = Action.objects.filter(pk=follower.pk, status=Action.Status.APPROVED).update(
                status=Action.Status.QUEUED, queued_at=now
            )
            if not moved:
                continue
            audit.record(
                "action.queued",
                actor_name=audit.SYSTEM,
                environment=follower.environment,
                action_id=follower.pk,
                payload={
                    "approvals": follower.approvals.filter(
                        decision=Approval.Decision.APPROVE
                    ).count(),
                    "after": follower.queued_behind_id,
                },
            )
        follower.status, follower.queued_at = Action.Status.QUEUED, now
        released.append(follower)
    return released


def _supersede_behind(action: Action) -> list[Action]:
    """Supersede the open actions queued behind an action that ended without succeeding."""
    behind = Action.objects.filter(queued_behind=action, status__in=OPEN).order_by("pk")
    superseded = []
    for follower in behind:
        # Whatever waited behind the follower started from its end, which never comes.
        if reason := plan_problem(follower, ahead=action):
            superseded += _supersede_chain(follower.pk, reason)
    return superseded
