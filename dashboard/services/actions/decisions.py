"""Approve, reject and cancel actions; queue them once enough approvers said yes."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone

from dashboard import audit, roles, scripts
from dashboard.models import Action, Approval
from dashboard.runner import bundle, review
from dashboard.services import holding, superseding
from dashboard.services.actions import pinning as plans
from dashboard.services.actions import queueing, scheduling
from dashboard.services.actions.errors import (
    SCRIPT_CHANGED,
    ActionRefused,
    AlreadyDecided,
    EnvironmentUnavailable,
    NotAllowed,
    NotPrepared,
    PlanChanged,
    SelfApproval,
    WrongState,
)
from dashboard.services.actions.lookups import (
    config_or_refuse,
    environment_or_refuse,
    locked_action_or_refuse,
)
from dashboard.services.actions.runs import enqueue_run


def action_approve(
    *,
    user: Any,
    action_id: int,
    plan_hash: str,
    comment: str = "",
    request: HttpRequest | None = None,
) -> Action:
    """Approve the plan the approver saw; with enough approvals the action is queued."""
    if not roles.can_approve(user):
        raise NotAllowed("only approvers and admins may approve actions")
    # Code changed since the plan, or the one ahead ended without succeeding: it can never run,
    # so set it aside for everyone, then refuse (as the page, which offers no Approve).
    if reason := superseding.action_supersede_if_unheld(action_id=action_id):
        raise PlanChanged(f"{reason}: request it again")
    with transaction.atomic():
        action = locked_action_or_refuse(action_id)
        _check_decidable(action, user, verb="approve")
        if reason := holding.plan_problem(action, ahead=action.queued_behind):
            raise PlanChanged(f"{reason}: request it again")  # the one ahead ended just now
        if plan_hash != action.plan_hash:
            raise PlanChanged("the plan changed since you reviewed it: review it again")
        _check_fingerprint(action)
        _decide(action, user, Approval.Decision.APPROVE, comment)
        approvals = action.approvals.filter(decision=Approval.Decision.APPROVE).count()
        audit.record(
            "action.approved",
            actor=user,
            request=request,
            environment=action.environment,
            action_id=action.pk,
            payload={
                "plan_hash": plan_hash,
                "comment": comment,
                "approvals": approvals,
                "required": action.approvals_required,
            },
        )
        if approvals >= action.approvals_required:
            queue_action(action)
    return action


def action_reject(
    *, user: Any, action_id: int, reason: str, request: HttpRequest | None = None
) -> Action:
    """Reject a requested action: one rejection ends it."""
    if not roles.can_approve(user):
        raise NotAllowed("only approvers and admins may reject actions")
    reason = reason.strip()
    if not reason:
        raise ActionRefused("give a reason for the rejection")
    with transaction.atomic():
        action = locked_action_or_refuse(action_id)
        _check_decidable(action, user, verb="reject")
        _decide(action, user, Approval.Decision.REJECT, reason)
        now = timezone.now()
        action.status = Action.Status.REJECTED
        action.decided_at = action.finished_at = now
        action.save(update_fields=["status", "decided_at", "finished_at"])
        audit.record(
            "action.rejected",
            actor=user,
            request=request,
            environment=action.environment,
            action_id=action.pk,
            payload={"reason": reason, "plan_hash": action.plan_hash},
        )
    superseding.actions_supersede_after(action_id=action.pk)  # the ones queued behind it
    return action


def action_cancel(*, user: Any, action_id: int, request: HttpRequest | None = None) -> Action:
    """Cancel an action that has not run yet, or ask the worker to stop a running one."""
    with transaction.atomic():
        action = locked_action_or_refuse(action_id)
        is_requester = action.requested_by_account(user) and roles.can_request(user)
        if not (is_requester or roles.role_of(user) == roles.ADMIN):
            raise NotAllowed("only the requester or an admin may cancel this action")
        name = user.get_username()
        if action.status == Action.Status.RUNNING:
            if not action.cancel_requested:
                action.cancel_requested = True
                action.cancel_requested_by = name
                action.save(update_fields=["cancel_requested", "cancel_requested_by"])
                audit.record(
                    "action.cancel_requested",
                    actor=user,
                    request=request,
                    environment=action.environment,
                    action_id=action.pk,
                    payload={"worker": action.worker},
                )
            return action
        if action.status not in (
            Action.Status.REQUESTED,
            Action.Status.APPROVED,
            Action.Status.SCHEDULED,
            Action.Status.QUEUED,
        ):
            raise WrongState(
                f"action #{action.pk} is {action.status}: it can no longer be cancelled"
            )
        before = action.status
        action.status = Action.Status.CANCELLED
        action.finished_at = timezone.now()
        action.error = f"cancelled by {name} while {before}"
        action.save(update_fields=["status", "finished_at", "error"])
        audit.record(
            "action.cancelled",
            actor=user,
            request=request,
            environment=action.environment,
            action_id=action.pk,
            payload={"from_status": before},
        )
    superseding.actions_supersede_after(action_id=action.pk)  # the ones queued behind it
    return action


def _check_decidable(action: Action, user: Any, *, verb: str) -> None:
    if action.status == Action.Status.SUPERSEDED:
        raise WrongState(f"action #{action.pk} was {action.error}")
    if action.status != Action.Status.REQUESTED:
        raise WrongState(
            f"action #{action.pk} is {action.status}: only requested actions can be {verb}d"
        )
    if action.may_be_requested_by(user):
        hint = "another approver must approve it" if verb == "approve" else "cancel it instead"
        raise SelfApproval(f"you requested action #{action.pk}, so you cannot {verb} it: {hint}")
    same_person = Q(username=user.get_username())
    if getattr(user, "pk", None):
        same_person |= Q(user_id=user.pk)
    earlier = action.approvals.filter(same_person).first()
    if earlier is not None:
        raise AlreadyDecided(f"you already {earlier.decision}d action #{action.pk}")
    if verb == "approve" and not action.is_prepared:
        raise NotPrepared("the plan's SQL is still being prepared: review it once it is shown")
    if verb == "approve" and review.note_says_failed(action.sql_note):
        # Something broke rendering it (unlike a plan Alembic cannot render offline): what
        # the approver would vouch for is unseen, and may not even be the plan.
        raise ActionRefused(f"{action.sql_note}; it cannot be approved: request it again")


def _check_fingerprint(action: Action) -> None:
    config = config_or_refuse()
    env, project = environment_or_refuse(config, action.environment)
    try:
        # By content: a touched file is the same plan, a same-size edit is not.
        now = plans.current_fingerprint(project)
    except (scripts.ScriptLocationError, OSError, bundle.BundleError) as exc:
        raise EnvironmentUnavailable(f"cannot read project {project.name}: {exc}") from exc
    if now != action.fingerprint:
        raise PlanChanged(SCRIPT_CHANGED)


def _decide(action: Action, user: Any, decision: str, comment: str) -> None:
    try:
        with transaction.atomic():
            Approval.objects.create(
                action=action,
                user=user if getattr(user, "pk", None) else None,
                username=user.get_username(),
                decision=decision,
                comment=comment.strip(),
                plan_hash=action.plan_hash,
            )
    except IntegrityError as exc:
        # The constraint answers a race the check above cannot: a double-clicked approve.
        raise AlreadyDecided(f"you already decided on action #{action.pk}") from exc


def queue_action(action: Action) -> None:
    """Move an action with enough approvals to approved, then queued, and enqueue its run.

    One queued behind an unfinished action stays approved, off the task queue, until that
    one succeeded.
    """
    now = timezone.now()
    action.status = Action.Status.APPROVED
    action.decided_at = now
    action.save(update_fields=["status", "decided_at"])
    if queueing.follower_waits(action, enqueue=enqueue_run):
        return
    if scheduling.action_hold(action):
        return  # outside its windows or before its run-at time: a deferred run starts it
    action.status = Action.Status.QUEUED
    action.queued_at = timezone.now()
    action.save(update_fields=["status", "queued_at"])
    audit.record(
        "action.queued",
        actor_name=audit.SYSTEM,
        environment=action.environment,
        action_id=action.pk,
        payload={"approvals": action.approvals.filter(decision=Approval.Decision.APPROVE).count()},
    )
    action_id = action.pk
    transaction.on_commit(lambda: enqueue_run(action_id))
