"""Approve, reject, pause, resume and cancel rollouts."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone

from dashboard import audit, roles
from dashboard.models import Action, Approval, Rollout, RolloutApproval
from dashboard.services.actions.errors import (
    AlreadyDecided,
    NotAllowed,
    NotPrepared,
    PlanChanged,
    SelfApproval,
    WrongState,
)
from dashboard.services.rollouts.errors import RolloutNotFound
from dashboard.services.rollouts.waves import BROKE, rollout_advance, start_running


def rollout_approve(
    *,
    user: Any,
    rollout_id: int,
    rollout_hash: str,
    comment: str = "",
    request: HttpRequest | None = None,
) -> Rollout:
    """Approve the rollout the approver saw; with enough approvals its first wave starts."""
    if not roles.can_approve(user):
        raise NotAllowed("only approvers and admins may approve rollouts")
    with transaction.atomic():
        rollout = _locked(rollout_id)
        _check_decidable(rollout, user, verb="approve")
        if rollout_hash != rollout.rollout_hash:
            raise PlanChanged("the rollout changed since you reviewed it: review it again")
        _decide(rollout, user, Approval.Decision.APPROVE, comment)
        approvals = list(rollout.approvals.filter(decision=Approval.Decision.APPROVE))
        audit.record(
            "rollout.approved",
            actor=user,
            request=request,
            payload={
                "rollout": rollout.pk,
                "rollout_hash": rollout_hash,
                "comment": comment,
                "approvals": len(approvals),
                "required": rollout.approvals_required,
            },
        )
        if len(approvals) >= rollout.approvals_required:
            start_running(rollout, approvers=approvals)
    return rollout


def rollout_reject(
    *, user: Any, rollout_id: int, comment: str = "", request: HttpRequest | None = None
) -> Rollout:
    """Reject a requested rollout: none of its members will run."""
    if not roles.can_approve(user):
        raise NotAllowed("only approvers and admins may reject rollouts")
    with transaction.atomic():
        rollout = _locked(rollout_id)
        _check_decidable(rollout, user, verb="reject")
        _decide(rollout, user, Approval.Decision.REJECT, comment)
        rollout.status = Rollout.Status.REJECTED
        rollout.decided_at = rollout.finished_at = timezone.now()
        rollout.save(update_fields=["status", "decided_at", "finished_at"])
        audit.record(
            "rollout.rejected",
            actor=user,
            request=request,
            payload={"rollout": rollout.pk, "comment": comment},
        )
    return rollout


def rollout_pause(*, user: Any, rollout_id: int, request: HttpRequest | None = None) -> Rollout:
    """Pause a running rollout: members running now finish, no new one starts."""
    _require_operator(user, "pause")
    with transaction.atomic():
        rollout = _locked(rollout_id)
        if rollout.status != Rollout.Status.RUNNING:
            raise WrongState(
                f"rollout #{rollout.pk} is {rollout.status}: only a running one pauses"
            )
        rollout.status = Rollout.Status.PAUSED
        rollout.paused_reason = f"paused by {user.get_username()}"
        rollout.save(update_fields=["status", "paused_reason"])
        # Queued members not started yet wait too (their claim would put them back anyway).
        rollout.actions.filter(status__in=(Action.Status.QUEUED, Action.Status.SCHEDULED)).update(
            status=Action.Status.APPROVED, queued_at=None, scheduled_for=None
        )
        audit.record(
            "rollout.paused",
            actor=user,
            request=request,
            payload={"rollout": rollout.pk, "wave": rollout.current_wave, "by": "operator"},
        )
    return rollout


def rollout_resume(*, user: Any, rollout_id: int, request: HttpRequest | None = None) -> Rollout:
    """Resume a paused rollout, skipping the members that failed so far."""
    _require_operator(user, "resume")
    with transaction.atomic():
        rollout = _locked(rollout_id)
        if rollout.status != Rollout.Status.PAUSED:
            raise WrongState(
                f"rollout #{rollout.pk} is {rollout.status}: only a paused one resumes"
            )
        failed = sorted(
            rollout.actions.filter(status__in=BROKE).values_list("environment", flat=True)
        )
        newly = [name for name in failed if name not in rollout.skipped]
        rollout.skipped = sorted({*rollout.skipped, *failed})
        rollout.status = Rollout.Status.RUNNING
        rollout.paused_reason = ""
        rollout.save(update_fields=["skipped", "status", "paused_reason"])
        audit.record(
            "rollout.resumed",
            actor=user,
            request=request,
            payload={"rollout": rollout.pk, "wave": rollout.current_wave, "skipped": newly},
        )
    rollout_advance(rollout_id=rollout.pk)
    rollout.refresh_from_db()
    return rollout


def rollout_cancel(*, user: Any, rollout_id: int, request: HttpRequest | None = None) -> Rollout:
    """Cancel a rollout: members not started are cancelled, running ones finish."""
    _require_operator(user, "cancel")
    with transaction.atomic():
        rollout = _locked(rollout_id)
        if rollout.is_finished:
            raise WrongState(
                f"rollout #{rollout.pk} is {rollout.status}: it can no longer be cancelled"
            )
        name = user.get_username()
        now = timezone.now()
        not_started = rollout.actions.filter(
            status__in=(Action.Status.APPROVED, Action.Status.SCHEDULED, Action.Status.QUEUED)
        )
        cancelled = list(not_started.values_list("pk", flat=True))
        not_started.update(
            status=Action.Status.CANCELLED,
            finished_at=now,
            error=f"rollout #{rollout.pk} was cancelled by {name} before this member started",
        )
        running = rollout.actions.filter(status=Action.Status.RUNNING).count()
        before = rollout.status
        rollout.status = Rollout.Status.CANCELLED
        rollout.finished_at = now
        rollout.error = f"cancelled by {name}" + (
            f"; {running} running member(s) were left to finish" if running else ""
        )
        rollout.save(update_fields=["status", "finished_at", "error"])
        audit.record(
            "rollout.cancelled",
            actor=user,
            request=request,
            payload={
                "rollout": rollout.pk,
                "from_status": before,
                "cancelled_members": len(cancelled),
                "running_members": running,
            },
        )
    return rollout


def _locked(rollout_id: int) -> Rollout:
    found = Rollout.objects.select_for_update().filter(pk=rollout_id).first()
    if found is None:
        raise RolloutNotFound(f"no rollout #{rollout_id}")
    return found


def _require_operator(user: Any, verb: str) -> None:
    if not (roles.can_request(user) or roles.can_approve(user)):
        raise NotAllowed(f"only operators, approvers and admins may {verb} rollouts")


def _check_decidable(rollout: Rollout, user: Any, *, verb: str) -> None:
    if rollout.status == Rollout.Status.PREPARING:
        raise NotPrepared("the rollout's SQL is still being prepared: review it once it is shown")
    if rollout.status != Rollout.Status.REQUESTED:
        raise WrongState(
            f"rollout #{rollout.pk} is {rollout.status}: only requested rollouts can be {verb}d"
        )
    if rollout.may_be_requested_by(user):
        hint = "another approver must approve it" if verb == "approve" else "cancel it instead"
        raise SelfApproval(f"you requested rollout #{rollout.pk}, so you cannot {verb} it: {hint}")
    same_person = Q(username=user.get_username())
    if getattr(user, "pk", None):
        same_person |= Q(user_id=user.pk)
    earlier = rollout.approvals.filter(same_person).first()
    if earlier is not None:
        raise AlreadyDecided(f"you already {earlier.decision}d rollout #{rollout.pk}")


def _decide(rollout: Rollout, user: Any, decision: str, comment: str) -> None:
    try:
        with transaction.atomic():
            RolloutApproval.objects.create(
                rollout=rollout,
                user=user if getattr(user, "pk", None) else None,
                username=user.get_username(),
                decision=decision,
                comment=comment.strip(),
                rollout_hash=rollout.rollout_hash,
            )
    except IntegrityError as exc:
        raise AlreadyDecided(f"you already decided on rollout #{rollout.pk}") from exc
