"""Say whether an action's plan still holds: the code it pins, the heads it starts from, the one ahead.

Pure reads, shared by the services that mark such actions superseded and the pages that must not
offer to approve them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from dashboard import scripts
from dashboard.config import DashboardConfig
from dashboard.models import Action, Snapshot

logger = logging.getLogger(__name__)

# Not running yet: an action whose plan no longer holds can still be set aside before it starts.
OPEN = (
    Action.Status.REQUESTED,
    Action.Status.APPROVED,
    Action.Status.SCHEDULED,
    Action.Status.QUEUED,
)
SCRIPT_CHANGED = "the script directory changed since this plan was made"
# Snapshot states in which the version table was read, so their heads are what it held.
READ_STATES = (
    Snapshot.State.CURRENT,
    Snapshot.State.BEHIND,
    Snapshot.State.UNINITIALIZED,
    Snapshot.State.UNKNOWN,
    Snapshot.State.INVALID,
)


def plan_problem(
    action: Action,
    *,
    fingerprint: str | None = None,
    heads: Sequence[str] | None = None,
    read_at: datetime | None = None,
    ahead: Action | None = None,
) -> str:
    """Return why the action's plan no longer holds, or "" while it holds as far as is known.

    fingerprint is the project's code as it is now, heads the environment's as read at read_at,
    ahead the action it is queued behind; None means not known, and proves nothing.
    """
    if action.status not in OPEN:
        return ""
    if fingerprint is not None and fingerprint != action.fingerprint:
        return SCRIPT_CHANGED
    if action.queued_behind_id is not None and ahead is not None:
        if ahead.status != Action.Status.SUCCEEDED and ahead.is_finished:
            return (
                f"action #{ahead.pk}, which it was queued behind, ended {ahead.status}: its plan"
                f" starts at {heads_phrase(action.from_heads)}, where #{ahead.pk} would have ended"
            )
        if not ahead.is_finished:
            return ""  # the heads move to where it starts once the one ahead has run
    if heads is None or set(heads) == set(action.from_heads):
        return ""
    # A read from before the request (or before the one ahead ended) says nothing about it.
    since = [action.created_at, ahead.finished_at if ahead is not None else None]
    if read_at is not None and any(moment and read_at <= moment for moment in since):
        return ""
    return (
        f"{action.environment} moved from {heads_phrase(action.from_heads)} to"
        f" {heads_phrase(heads)} since this plan was made"
    )


def open_on(environment: str) -> list[Action]:
    """Return the environment's actions that have not started, oldest first."""
    return list(
        Action.objects.filter(environment=environment, status__in=OPEN).order_by("created_at", "pk")
    )


def aheads_of(actions: Iterable[Action]) -> dict[int, Action]:
    """Return the actions these are queued behind, by id, in one query."""
    ids = {a.queued_behind_id for a in actions if a.queued_behind_id is not None}
    return {a.pk: a for a in Action.objects.filter(pk__in=ids)} if ids else {}


def plan_problems(
    actions: Sequence[Action], config: DashboardConfig, *, for_page: bool = False
) -> dict[int, str]:
    """Return why each of these actions' plans no longer holds, by id, from what is stored.

    The code is fingerprinted now (a read of the project's files; for a page, only of files whose
    stat moved); the heads are the newest successful snapshot's, unless an action runs there.
    """
    pending = [a for a in actions if a.status in OPEN]
    if not pending:
        return {}
    fingerprints = project_fingerprints(config, {a.project for a in pending}, for_page=for_page)
    environments = {a.environment for a in pending}
    busy = set(
        Action.objects.running()
        .filter(environment__in=environments)
        .values_list("environment", flat=True)
    )
    heads = latest_heads(environments - busy)
    aheads = aheads_of(pending)
    found = {}
    for action in pending:
        known = heads.get(action.environment)
        reason = plan_problem(
            action,
            fingerprint=fingerprints.get(action.project),
            heads=known[0] if known else None,
            read_at=known[1] if known else None,
            ahead=aheads.get(action.queued_behind_id or 0),
        )
        if reason:
            found[action.pk] = reason
    return found


def project_fingerprints(
    config: DashboardConfig, names: set[str], *, for_page: bool = False
) -> dict[str, str]:
    """Return the current fingerprint of each named project whose files can be read."""
    # The runner's package starts Alembic; a status refresh that supersedes nothing skips it.
    from dashboard.runner import bundle

    found = {}
    for name in names:
        project = config.projects.get(name)
        if project is None:
            continue
        try:
            # Timestamps are a page's fast path only; what supersedes a request reads every byte.
            found[name] = (
                bundle.page_digest(project) if for_page else bundle.bundle_read(project).digest
            )
        except (scripts.ScriptLocationError, OSError, bundle.BundleError):
            logger.warning("cannot fingerprint project %s", name)
    return found


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


def heads_phrase(heads: Sequence[str]) -> str:
    """Return heads as a sentence names them: ids joined by commas, or base."""
    return ", ".join(heads) if heads else "base"
