"""The request form: which targets the revision picker offers for an environment and direction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.urls import reverse

from dashboard.config import current_config
from dashboard.history import Graph
from dashboard.models import Action, Snapshot
from dashboard.roles import can_request
from dashboard.scripts import ScriptLocationError
from dashboard.selectors.actions import DIRECTION_LABELS, project_graph, short
from dashboard.selectors.drift import latest_checks
from dashboard.selectors.status import last_read, latest_snapshots, unreadable_reason

# Snapshot states whose heads are all revisions the script directory has.
KNOWN_HEADS = (
    Snapshot.State.CURRENT,
    Snapshot.State.BEHIND,
    Snapshot.State.UNINITIALIZED,
    Snapshot.State.INVALID,
)


@dataclass(frozen=True)
class TargetChoice:
    """One entry of the revision picker."""

    value: str
    label: str


@dataclass(frozen=True)
class DirectionTab:
    """One direction of the request form, as a link that keeps working without JavaScript."""

    value: str
    label: str
    url: str
    current: bool


@dataclass(frozen=True)
class QueueBehind:
    """The environment's last unfinished action: a new request must be queued behind it."""

    id: int
    url: str
    summary: str  # "upgrade to heads, requested by olga"
    ends_at: list[str]  # the heads it leaves, where a request queued behind it starts


@dataclass(frozen=True)
class RequestPage:
    """Everything the request form shows for one environment and direction."""

    environment: str
    project: str
    description: str
    approvals_required: int
    direction: str
    direction_label: str
    tabs: list[DirectionTab]
    targets: list[TargetChoice]
    heads: list[str]
    heads_read_at: datetime | None
    heads_known: bool
    # How the heads shown were read: "as read", "last known, read", or "" when not known.
    heads_source: str
    problem: str
    note: str
    may_request: bool
    url: str
    # Why no action can be requested now (the environment cannot be read); "" when one can.
    blocked: str = ""
    # What happens after the request on this environment: approvals, or none.
    next_steps: str = ""
    # Set while another action is unfinished there: the request can only be queued behind it.
    queue_behind: QueueBehind | None = None

    @property
    def target_choices(self) -> list[tuple[str, str]]:
        """Return the picker's entries as a form's choices."""
        return [(choice.value, choice.label) for choice in self.targets]


def _revision_label(graph: Graph, rev: str) -> str:
    revision = graph.revisions[rev]
    labels = graph.labels_of(rev)
    text = f"{short(rev)} {revision.message}".strip()
    marks = [f"[{', '.join(labels)}]"] if labels else []
    if rev in graph.heads:
        marks.append("(head)")
    return " ".join([text, *marks])


def _upgrade_targets(graph: Graph, heads: list[str] | None) -> list[TargetChoice]:
    applied: set[str] = set()
    for head in heads or ():
        applied |= {head, *graph.ancestors(head)}
    latest = ", ".join(short(h) for h in graph.heads)
    choices = [TargetChoice("heads", f"heads: every head ({latest})")]
    for rev in graph.topological():
        if rev not in applied and not graph.revisions[rev].unreadable:
            choices.append(TargetChoice(rev, _revision_label(graph, rev)))
    return choices


def _downgrade_targets(graph: Graph, heads: list[str] | None) -> list[TargetChoice]:
    if heads is None:
        below = set(graph.revisions)
    else:
        below = set()
        for head in heads:
            below |= graph.ancestors(head)
    choices = [
        TargetChoice(rev, _revision_label(graph, rev))
        for rev in graph.topological()
        if rev in below and not graph.revisions[rev].unreadable
    ]
    choices.append(TargetChoice("base", "base: remove every revision"))
    return choices


def _stamp_targets(graph: Graph, exact: str | None) -> list[TargetChoice]:
    """Offer every revision to stamp, the one the schema check matched exactly first."""
    latest = ", ".join(short(h) for h in graph.heads)
    choices = [TargetChoice("heads", f"heads: every head ({latest})")]
    for rev in graph.topological():
        if graph.revisions[rev].unreadable:
            continue  # a file that does not parse is no revision Alembic could stamp
        label = _revision_label(graph, rev)
        if rev == exact:
            choices.insert(0, TargetChoice(rev, f"{label} — the schema matches it exactly"))
        else:
            choices.append(TargetChoice(rev, label))
    return choices


def _adoption_match(environment: str) -> str | None:
    """Return the revision the latest schema check found this environment's tables match."""
    check = latest_checks([environment]).get(environment)
    exact = check.adoption.get("exact") if check is not None and check.adoption else None
    return exact if isinstance(exact, str) else None


def _may_stamp(heads: list[str] | None) -> bool:
    """Say whether the stamp tab is offered: only where no version rows are known."""
    return heads is not None and not heads


def request_page(*, user: Any, environment: str, direction: str) -> RequestPage | None:
    """Return the request form's content, or None when the config has no such environment.

    Raises ConfigError when the config cannot be read: the page says so instead of a 404.
    """
    config = current_config()
    env = config.environments.get(environment)
    if env is None:
        return None
    if direction not in Action.Direction.values:
        direction = Action.Direction.UPGRADE
    url = reverse("action-request", args=[env.name])
    snapshot = latest_snapshots(env.project).get(env.name)
    problem = ""
    graph: Graph | None = None
    try:
        graph = project_graph(config.projects[env.project])
    except ScriptLocationError as exc:
        problem = f"The script directory cannot be read: {exc}"
    blocked = unreadable_reason(env.name, snapshot)
    # The heads shown: the latest read's, or while it failed the last read that succeeded.
    shown = last_read(env.name, env.project) if blocked else snapshot
    heads: list[str] | None = None
    if snapshot is not None and snapshot.state in KNOWN_HEADS:
        heads = list(snapshot.heads)
        if graph is not None and not all(h in graph.revisions for h in heads):
            heads = None
    ahead = _last_unfinished(env.name)
    if ahead is not None:
        # Only a request queued behind it can be made: it plans from where that one ends.
        heads = list(ahead.ends_at)
    stamp_note = ""
    if graph is None:
        targets: list[TargetChoice] = []
    elif direction == Action.Direction.STAMP:
        targets, stamp_note = _stamp_offer(env.name, graph, heads, ahead)
    elif direction == Action.Direction.UPGRADE:
        targets = _upgrade_targets(graph, heads)
    else:
        targets = _downgrade_targets(graph, heads)
    return RequestPage(
        environment=env.name,
        project=env.project,
        description=env.description,
        approvals_required=env.approvals_for(direction),
        direction=direction,
        direction_label=DIRECTION_LABELS[direction],
        tabs=[
            DirectionTab(
                value=value,
                label=label,
                url=f"{url}?{urlencode({'direction': value})}",
                current=value == direction,
            )
            for value, label in DIRECTION_LABELS.items()
            # A stamp adopts an environment without version rows: elsewhere it is not offered.
            if value != Action.Direction.STAMP
            or value == direction
            or (ahead is None and _may_stamp(heads))
        ],
        targets=[] if blocked else targets,
        heads=list(shown.heads) if shown is not None else [],
        heads_read_at=shown.read_at if shown is not None else None,
        heads_known=heads is not None,
        heads_source=("last known, read" if blocked else "as read") if shown is not None else "",
        problem=problem,
        note=stamp_note or _request_note(direction, heads, targets, read=snapshot is not None),
        may_request=can_request(user),
        url=url,
        blocked=f"{blocked}. Refresh it on its page once it is back" if blocked else "",
        next_steps=_next_steps(env.name, env.approvals_for(direction), DIRECTION_LABELS[direction]),
        queue_behind=ahead,
    )


def _stamp_offer(
    environment: str, graph: Graph, heads: list[str] | None, ahead: QueueBehind | None
) -> tuple[list[TargetChoice], str]:
    """Return the stamp's targets and the note beside them, or none with the reason."""
    if ahead is not None:
        return [], (
            f"A stamp is planned from the version table as it is: request it once #{ahead.id}"
            " has finished."
        )
    if heads:
        return [], (
            f"{environment} already has version rows, so it cannot be stamped: a stamp is only"
            " for an environment whose version table is missing or empty. Upgrade or roll back"
            " to move it."
        )
    exact = _adoption_match(environment)
    found = (
        f" The latest schema check found its tables match {short(exact)} exactly." if exact else ""
    )
    return _stamp_targets(graph, exact), (
        "A stamp writes the version table only: no revision runs and no other table changes."
        f" Pick the revision this database's schema already is at.{found}"
    )


def _last_unfinished(environment: str) -> QueueBehind | None:
    """Return the environment's newest unfinished action, which a new request must follow."""
    action = Action.objects.filter(environment=environment).active().order_by("-pk").first()
    if action is None:
        return None
    return QueueBehind(
        id=action.pk,
        url=reverse("action-detail", args=[action.pk]),
        summary=(
            f"{DIRECTION_LABELS.get(action.direction, action.direction).lower()} to"
            f" {action.target}, {action.get_status_display()}, requested by"
            f" {action.requested_by_name}"
        ),
        ends_at=list(action.target_heads),
    )


def _next_steps(environment: str, approvals: int, direction_label: str) -> str:
    """Say what happens after the request on this environment, by its approval policy."""
    seen = "You will see the plan and its SQL next"
    if approvals == 0:
        return (
            f"{seen}. This {direction_label.lower()} needs no approval on {environment}:"
            " it runs as soon as its SQL is ready."
        )
    plural = "" if approvals == 1 else "s"
    return (
        f"{seen}; it runs only after {approvals} approval{plural} from someone else"
        " (nobody approves their own request)."
    )


def _request_note(
    direction: str, heads: list[str] | None, targets: list[TargetChoice], *, read: bool
) -> str:
    if heads is None and read:
        return (
            "The last read did not give heads this script directory has, so every revision is"
            " offered; the plan is made from a fresh read when you submit."
        )
    if heads is None:
        return (
            "This environment's heads are not known yet, so every revision is offered;"
            " the plan is made from a fresh read when you submit."
        )
    if direction == Action.Direction.UPGRADE and len(targets) == 1:
        return "Every revision is already applied here, as of the last read."
    if direction == Action.Direction.DOWNGRADE and not heads:
        return "Nothing is applied here, as of the last read."
    return "Only the revisions this direction can reach are offered; the plan is made from a fresh read when you submit."
