"""Set aside requests whose plan no longer holds, and place a new request behind unfinished ones.

A plan starts from the heads its environment had when it was made. When those heads move
(another action ran, someone ran Alembic by hand), the code it pins changes, or the action it
was queued behind did not succeed, the plan can no longer run: the action becomes superseded,
with the reason, instead of waiting for an approval that would fail.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from dashboard import audit, scripts
from dashboard.config import ConfigError, DashboardConfig, Project, current_config
from dashboard.models import Action, Snapshot
from dashboard.runner import bundle
from dashboard.services.holding import (
    OPEN,
    aheads_of,
    open_on,
    plan_problem,
)

__all__ = [
    "action_supersede",
    "action_supersede_if_changed",
    "actions_supersede_after",
    "actions_supersede_moved",
    "actions_supersede_stale",
    "plan_problem",
]

logger = logging.getLogger(__name__)
READ_STATES = (
    Snapshot.State.CURRENT,
    Snapshot.State.BEHIND,
    Snapshot.State.UNINITIALIZED,
    Snapshot.State.UNKNOWN,
    Snapshot.State.INVALID,
)


def action_supersede(*, action_id: int, reason: str) -> Action | None:
    """Mark an action that has not started superseded, with the reason, and audit it."""
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
        if reason and (done := action_supersede(action_id=action.pk, reason=reason)):
            superseded.append(done)
    return superseded


def actions_supersede_after(*, action_id: int) -> list[Action]:
    """After an action ended: supersede the plans its success moved, or that were behind it."""
    action = Action.objects.filter(pk=action_id).first()
    if action is None or not action.is_finished:
        return []
    if action.status == Action.Status.SUCCEEDED and action.after_heads is not None:
        return actions_supersede_moved(
            environment=action.environment, heads=action.after_heads, read_at=action.finished_at
        )
    return _supersede_behind(action)


def actions_supersede_stale(*, config: DashboardConfig | None = None) -> list[Action]:
    """Supersede every open action whose plan no longer holds, from what is known without reads.

    The code is fingerprinted now; the heads are the newest successful snapshot's.
    """
    pending = list(Action.objects.filter(status__in=OPEN).order_by("created_at", "pk"))
    if not pending:
        return []
    try:
        config = config or current_config()
    except ConfigError:
        return []
    fingerprints = project_fingerprints(config, {a.project for a in pending})
    busy = set(
        Action.objects.running()
        .filter(environment__in={a.environment for a in pending})
        .values_list("environment", flat=True)
    )
    heads = latest_heads({a.environment for a in pending} - busy)
    aheads = aheads_of(pending)
    superseded = []
    for action in pending:
        known = heads.get(action.environment)
        reason = plan_problem(
            action,
            fingerprint=fingerprints.get(action.project),
            heads=known[0] if known else None,
            read_at=known[1] if known else None,
            ahead=aheads.get(action.queued_behind_id or 0),
        )
        if reason and (done := action_supersede(action_id=action.pk, reason=reason)):
            superseded.append(done)
    return superseded


def action_supersede_if_changed(*, action_id: int) -> Action | None:
    """Supersede one open action whose project's code changed since its plan; return it if so."""
    action = Action.objects.filter(pk=action_id, status__in=OPEN).first()
    if action is None:
        return None
    try:
        config = current_config()
    except ConfigError:
        return None
    fingerprint = project_fingerprints(config, {action.project}).get(action.project)
    reason = plan_problem(action, fingerprint=fingerprint)
    return action_supersede(action_id=action.pk, reason=reason) if reason else None


def project_fingerprints(config: DashboardConfig, names: set[str]) -> dict[str, str]:
    """Return the current fingerprint of each named project whose files can be read."""
    found = {}
    for name in names:
        project = config.projects.get(name)
        if project is None:
            continue
        try:
            found[name] = current_fingerprint(project)
        except (scripts.ScriptLocationError, OSError, bundle.BundleError):
            logger.warning("cannot fingerprint project %s", name)
    return found


def current_fingerprint(project: Project) -> str:
    """Return the fingerprint an action pins, as the project's files are now."""
    # pinning.current_fingerprint's rule, read here without importing the actions package,
    # which imports this module through the runs that call it.
    return bundle.bundle_read(project).digest


def latest_heads(environments: set[str]) -> dict[str, tuple[list[str], datetime]]:
    """Return each environment's heads and read time from its newest successful snapshot."""
    found: dict[str, tuple[list[str], datetime]] = {}
    for name in environments:
        snapshot = (
            Snapshot.objects.filter(environment=name, state__in=READ_STATES)
            .order_by("-read_at", "-id")
            .only("heads", "read_at")
            .first()
        )
        if snapshot is not None:
            found[name] = (list(snapshot.heads), snapshot.read_at)
    return found


def _supersede_behind(action: Action) -> list[Action]:
    """Supersede the open actions queued behind an action that ended without succeeding."""
    behind = Action.objects.filter(queued_behind=action, status__in=OPEN).order_by("pk")
    superseded = []
    for follower in behind:
        reason = plan_problem(follower, ahead=action)
        if reason and (done := action_supersede(action_id=follower.pk, reason=reason)):
            superseded.append(done)
            # Whatever waited behind the follower started from its end, which never comes.
            superseded += _supersede_behind(done)
    return superseded
