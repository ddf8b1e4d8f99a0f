"""Place a new request: behind the environment's unfinished actions, or refused beside them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.db.models import F

from dashboard import scripts
from dashboard.config import Project
from dashboard.models import Action
from dashboard.runner import bundle
from dashboard.services import superseding
from dashboard.services.actions import pinning as plans
from dashboard.services.actions.errors import WouldBeStale
from dashboard.services.holding import heads_phrase, open_on, plan_problem


@dataclass(frozen=True)
class RequestStart:
    """Where a new request's plan starts, the action it waits for, and why it may not be made."""

    heads: tuple[str, ...]
    ahead: Action | None
    conflict: WouldBeStale | None = None

    def refuse_if_conflicting(self) -> None:
        """Refuse the request when another unfinished action would make its plan stale."""
        if self.conflict is not None:
            raise self.conflict


def request_start(
    *,
    environment: str,
    project: Project,
    heads: Sequence[str],
    read_at: datetime | None,
    queue_behind: int | None,
) -> RequestStart:
    """Return where a new request plans from and what it waits for; refuse a bad queue_behind.

    Requests that no longer hold are set aside first. Another unfinished action on the
    environment will move its heads: a plan from the current heads would fail as stale, so
    the new one must be queued behind the last of them and plan from where that one ends
    (the conflict is returned, for the caller to raise once the target is known to be valid).
    """
    superseding.actions_supersede_moved(environment=environment, heads=heads, read_at=read_at)
    try:
        fingerprint: str | None = plans.current_fingerprint(project)
    except (scripts.ScriptLocationError, OSError, bundle.BundleError):
        fingerprint = None  # the request itself reads the project and says what is wrong
    for action in open_on(environment):
        if reason := plan_problem(action, fingerprint=fingerprint):
            superseding.action_supersede(action_id=action.pk, reason=reason)
    return _placement(environment=environment, heads=heads, queue_behind=queue_behind)


def request_hold(*, environment: str, heads: Sequence[str], queue_behind: int | None) -> None:
    """Make the environment's requests take turns until this transaction ends, then check again.

    Two requests read at once would both find nothing unfinished and plan from the same heads;
    the second to get here sees the first's action and is refused or must queue behind it.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("request_hold holds its lock until the transaction ends: open one")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", [f"dashboard.request:{environment}"]
            )
    else:
        # SQLite locks the whole file for writing: a write that changes nothing takes it now,
        # before the reads below (a transaction that read first could not write later).
        Action.objects.filter(pk=0).update(environment=F("environment"))
    _placement(
        environment=environment, heads=heads, queue_behind=queue_behind
    ).refuse_if_conflicting()


def follower_waits(action: Action, *, enqueue: Callable[[int], None]) -> bool:
    """Say whether an approved action waits, off the task queue, for the unfinished one ahead.

    The one ahead's success queues it (superseding.actions_release_behind); should that come
    before this transaction commits, it missed this action, so the commit looks again.
    """
    if action.queued_behind_id is None:
        return False
    ahead = Action.objects.filter(pk=action.queued_behind_id).first()
    if ahead is None or ahead.is_finished:
        return False
    ahead_id = ahead.pk

    def release_if_ahead_succeeded() -> None:
        for released in superseding.actions_release_behind(action_id=ahead_id):
            enqueue(released.pk)

    transaction.on_commit(release_if_ahead_succeeded)
    return True


def _placement(*, environment: str, heads: Sequence[str], queue_behind: int | None) -> RequestStart:
    """Return where a request plans from beside the environment's unfinished actions."""
    unfinished = list(Action.objects.filter(environment=environment).active().order_by("pk"))
    last = unfinished[-1] if unfinished else None
    if queue_behind is None:
        if last is None:
            return RequestStart(heads=tuple(heads), ahead=None)
        conflict = WouldBeStale(
            f"action #{last.pk} ({last.direction} to {last.target}, {last.status}) will move"
            f" {environment} from {heads_phrase(heads)} to {heads_phrase(last.target_heads)}"
            " before this could run, so a plan from the current heads would fail as stale:"
            f" queue this request behind #{last.pk} to plan from where it ends, or wait until"
            " it has finished",
            ahead_id=last.pk,
        )
        return RequestStart(heads=tuple(heads), ahead=None, conflict=conflict)
    ahead = Action.objects.filter(pk=queue_behind).first()
    if ahead is None or ahead.environment != environment:
        raise WouldBeStale(f"no action #{queue_behind} on {environment} to queue behind")
    if ahead.is_finished:
        raise WouldBeStale(
            f"action #{ahead.pk} has already ended ({ahead.status}): request from"
            f" {environment}'s current heads instead",
            ahead_id=last.pk if last is not None else None,
        )
    if last is not None and last.pk != ahead.pk:
        raise WouldBeStale(
            f"action #{last.pk} is queued after #{ahead.pk}: queue behind #{last.pk}, the last"
            f" unfinished action on {environment}, so the plans follow one another",
            ahead_id=last.pk,
        )
    return RequestStart(heads=tuple(ahead.target_heads), ahead=ahead)
