"""Rollouts for pages: the request form, the rollout page and its live region, the list."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import Count, Q
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.safestring import SafeString

from dashboard.config import ConfigError, current_config
from dashboard.history import Graph
from dashboard.models import Action, Approval, Rollout, RolloutApproval
from dashboard.roles import can_approve, can_request
from dashboard.runner.monitor import heartbeat_limit
from dashboard.scripts import ScriptLocationError
from dashboard.selectors.actions import (
    DIRECTION_LABELS,
    LintRow,
    PlanRow,
    project_graph,
    short,
    status_shown,
)
from dashboard.selectors.plan_marks import PlanMarks, action_marks
from dashboard.selectors.sql import highlight_sql
from dashboard.services.rollouts.waves import BROKE

MEMBERS_SHOWN = 5  # member names a group or the request form names before "and N more"
FAILED_SHOWN = 50
ERROR_SHOWN = 2000
PER_PAGE = 50
# Member states in the order the counts show them; "approved" members wait for their turn.
STATE_ORDER = (
    Action.Status.RUNNING,
    Action.Status.QUEUED,
    Action.Status.SCHEDULED,
    Action.Status.APPROVED,
    Action.Status.SUCCEEDED,
    Action.Status.FAILED,
    Action.Status.INTERRUPTED,
    Action.Status.CANCELLED,
    Action.Status.SUPERSEDED,
)
STATE_LABELS: dict[str, str] = {Action.Status.APPROVED: "waiting"}


@dataclass(frozen=True)
class RolloutRequestPage:
    """What the rollout request form says of its fleet, and whether this user may use it."""

    fleet: str
    project: str
    url: str
    fleet_url: str
    member_count: int
    members_text: str
    approvals_upgrade: int
    approvals_downgrade: int
    waves_text: str
    parallel: int
    on_error: str
    problems: list[str]
    may_request: bool


@dataclass(frozen=True)
class GroupRow:
    """Members that share one plan: who, from which heads to which, the revisions, the SQL once."""

    number: int
    member_count: int
    members_text: str
    from_heads: list[str]
    target_heads: list[str]
    plan: list[PlanRow]
    sql_html: SafeString
    sql_sha256: str
    sql_note: str
    lint: list[LintRow]
    marks: PlanMarks


@dataclass(frozen=True)
class LeftOutRow:
    """A member the glob matched that will not run, and why."""

    member: str
    url: str
    reason: str


@dataclass(frozen=True)
class RolloutReview:
    """The groups under review and the decision forms when this user may decide."""

    rollout_id: int
    state: str  # "preparing" or "ready"
    groups: list[GroupRow]
    history_problem: str
    rollout_hash: str
    may_decide: bool
    decided_by_you: str
    own_request_note: str
    poll_url: str | None
    approve_url: str
    reject_url: str


@dataclass(frozen=True)
class StateCount:
    """How many members are in one state."""

    status: str
    label: str
    count: int


@dataclass(frozen=True)
class WaveRow:
    """One wave: its size, its members' counts by state, and whether it is the one running."""

    number: int
    size: int
    counts: list[StateCount]
    current: bool


@dataclass(frozen=True)
class FailedRow:
    """A member whose run failed or was interrupted, its error, and its action's page."""

    member: str
    wave: int | None
    status: str
    status_label: str
    error: str
    url: str
    skipped: bool


@dataclass(frozen=True)
class RolloutLive:
    """The live part of the rollout page: status, waves, counts, progress, failures, controls."""

    rollout_id: int
    status: str
    status_label: str
    current_wave: int
    waves: list[WaveRow]
    counts: list[StateCount]
    total: int
    done: int
    done_label: str
    failed: list[FailedRow]
    failed_more: int
    paused_reason: str
    error: str
    may_pause: bool
    may_resume: bool
    may_cancel: bool
    pause_url: str
    resume_url: str
    cancel_url: str
    poll_url: str | None


@dataclass(frozen=True)
class ApprovalRow:
    """One approver's decision as the rollout page lists it."""

    username: str
    decision: str
    comment: str
    created_at: datetime
    for_this_rollout: bool


@dataclass(frozen=True)
class RolloutPage:
    """Everything the rollout page shows."""

    rollout: Rollout
    direction_label: str
    fleet_url: str
    list_url: str
    left_out: list[LeftOutRow]
    approvals: list[ApprovalRow]
    approvals_text: str
    review: RolloutReview
    live: RolloutLive


@dataclass(frozen=True)
class RolloutRow:
    """One rollout in the list."""

    id: int
    url: str
    fleet: str
    direction_label: str
    target: str
    status: str
    status_label: str
    total: int
    counts: list[StateCount]
    requested_by: str
    created_at: datetime


@dataclass(frozen=True)
class RolloutList:
    """The rollouts list, newest first, a page at a time."""

    rows: list[RolloutRow]
    page: Page[Rollout]
    previous_url: str | None
    next_url: str | None


def rollout_request_page(*, user: Any, fleet: str) -> RolloutRequestPage | None:
    """Return what the rollout request form shows, or None when there is no such fleet."""
    config = current_config()
    found = config.fleets.get(fleet)
    if found is None:
        return None
    names = [m.member or m.name for m in config.members_of(found.name)]
    return RolloutRequestPage(
        fleet=found.name,
        project=found.project,
        url=reverse("rollout-request", args=[found.name]),
        fleet_url=_url("fleet", found.name),
        member_count=len(names),
        members_text=members_text(names),
        approvals_upgrade=found.policy.approvals_for(Action.Direction.UPGRADE),
        approvals_downgrade=found.policy.approvals_for(Action.Direction.DOWNGRADE),
        waves_text=", ".join(str(w) for w in found.waves) or "one wave",
        parallel=found.parallel,
        on_error=found.on_error,
        problems=list(found.problems),
        may_request=can_request(user),
    )


def rollout_page(*, user: Any, rollout_id: int) -> RolloutPage | None:
    """Return the rollout page's content, or None when there is no such rollout."""
    rollout = Rollout.objects.filter(pk=rollout_id).first()
    if rollout is None:
        return None
    approvals = list(rollout.approvals.all())
    counted = sum(
        1
        for a in approvals
        if a.decision == Approval.Decision.APPROVE and a.rollout_hash == rollout.rollout_hash
    )
    return RolloutPage(
        rollout=rollout,
        direction_label=DIRECTION_LABELS.get(rollout.direction, rollout.direction),
        fleet_url=_url("fleet", rollout.fleet),
        list_url=reverse("rollout-list"),
        left_out=[
            LeftOutRow(
                member=str(item.get("member", "")),
                url=_url("environment", str(item.get("member", ""))),
                reason=str(item.get("reason", "")),
            )
            for item in rollout.left_out
            if isinstance(item, dict)
        ],
        approvals=[
            ApprovalRow(
                username=a.username,
                decision=a.decision,
                comment=a.comment,
                created_at=a.created_at,
                for_this_rollout=a.rollout_hash == rollout.rollout_hash,
            )
            for a in approvals
        ],
        approvals_text=(
            f"{counted} of {rollout.approvals_required}"
            if rollout.approvals_required
            else "none needed"
        ),
        review=_review(user, rollout, approvals),
        live=_live(user, rollout),
    )


def rollout_review(*, user: Any, rollout_id: int) -> RolloutReview | None:
    """Return the review region of the rollout page (polled while its SQL is prepared)."""
    rollout = Rollout.objects.filter(pk=rollout_id).first()
    if rollout is None:
        return None
    return _review(user, rollout, list(rollout.approvals.all()))


def rollout_live(*, user: Any, rollout_id: int) -> RolloutLive | None:
    """Return the live region of the rollout page, or None when there is no such rollout."""
    # Polled every two seconds: leave the groups' SQL and the manifest behind.
    rollout = Rollout.objects.defer("groups", "left_out", "bundle").filter(pk=rollout_id).first()
    return _live(user, rollout) if rollout is not None else None


def rollout_list(*, page: str | int | None = 1) -> RolloutList:
    """Return the rollouts newest first, each with its members' counts by state."""
    rollouts = Rollout.objects.defer("groups", "left_out", "bundle").order_by("-created_at", "-id")
    current = Paginator(rollouts, PER_PAGE).get_page(page)
    shown = list(current.object_list)
    by_rollout: dict[int, dict[str, int]] = {}
    found = (
        Action.objects.filter(rollout_id__in=[r.pk for r in shown])
        .values("rollout_id", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for item in found:
        by_rollout.setdefault(item["rollout_id"], {})[item["status"]] = item["n"]
    rows = [
        RolloutRow(
            id=r.pk,
            url=reverse("rollout-detail", args=[r.pk]),
            fleet=r.fleet,
            direction_label=DIRECTION_LABELS.get(r.direction, r.direction),
            target=r.target if len(r.target) <= 40 else short(r.target),
            status=r.status,
            status_label=r.get_status_display(),
            total=sum(r.wave_sizes),
            counts=_ordered(by_rollout.get(r.pk, {})),
            requested_by=r.requested_by_name,
            created_at=r.created_at,
        )
        for r in shown
    ]
    return RolloutList(
        rows=rows,
        page=current,
        previous_url=f"?page={current.previous_page_number()}" if current.has_previous() else None,
        next_url=f"?page={current.next_page_number()}" if current.has_next() else None,
    )


def members_text(names: list[str], limit: int = MEMBERS_SHOWN) -> str:
    """Return up to limit member names, and how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _review(user: Any, rollout: Rollout, approvals: list[RolloutApproval]) -> RolloutReview:
    graph, problem = _graph(rollout.project)
    preparing = rollout.status == Rollout.Status.PREPARING
    mine = next((a for a in approvals if a.username == user.get_username()), None)
    requested = rollout.status == Rollout.Status.REQUESTED
    own = rollout.may_be_requested_by(user)
    return RolloutReview(
        rollout_id=rollout.pk,
        state="preparing" if preparing else "ready",
        groups=[
            _group(number, group, graph, rollout)
            for number, group in enumerate(rollout.groups, start=1)
            if isinstance(group, dict)
        ],
        history_problem=problem,
        rollout_hash=rollout.rollout_hash,
        may_decide=can_approve(user) and requested and not own and mine is None,
        decided_by_you=mine.get_decision_display() if mine is not None else "",
        own_request_note=(
            "You requested this rollout, so another approver must decide on it."
            if can_approve(user) and own and requested
            else ""
        ),
        poll_url=reverse("rollout-detail", args=[rollout.pk]) if preparing else None,
        approve_url=reverse("rollout-approve", args=[rollout.pk]),
        reject_url=reverse("rollout-reject", args=[rollout.pk]),
    )


def _group(number: int, group: dict[str, Any], graph: Graph | None, rollout: Rollout) -> GroupRow:
    members = [str(m) for m in group.get("members") or []]
    plan = [str(rev) for rev in group.get("plan") or []]
    sql = str(group.get("sql") or "")
    # The marks are read like an action's: an unsaved member action carries the group's plan.
    carrier = Action(
        environment=members[0] if members else "",
        plan=plan,
        plan_marks=group.get("plan_marks") or {},
        direction=rollout.direction,
    )
    return GroupRow(
        number=number,
        member_count=len(members),
        members_text=members_text(members),
        from_heads=list(group.get("from_heads") or []),
        target_heads=list(group.get("target_heads") or []),
        plan=[_plan_row(position, rev, graph) for position, rev in enumerate(plan, start=1)],
        sql_html=highlight_sql(sql),
        sql_sha256=str(group.get("sql_sha256") or ""),
        sql_note=str(group.get("sql_note") or ""),
        lint=_lint_rows(sql, group.get("lint")),
        marks=action_marks(carrier),
    )


def _plan_row(position: int, rev: str, graph: Graph | None) -> PlanRow:
    known = graph is not None and rev in graph.revisions
    return PlanRow(
        position=position,
        revision=rev,
        short=short(rev),
        message=graph.revisions[rev].message if graph is not None and known else "",
        labels=", ".join(graph.labels_of(rev)) if graph is not None and known else "",
    )


def _graph(project_name: str) -> tuple[Graph | None, str]:
    try:
        project = current_config().projects.get(project_name)
        return (project_graph(project) if project is not None else None), ""
    except (ConfigError, ScriptLocationError, OSError) as exc:
        return None, f"Revision messages are unavailable: {exc}"


def _lint_rows(sql: str, lint: object) -> list[LintRow]:
    sql_lines = sql.splitlines()
    rows = []
    for item in lint if isinstance(lint, list) else []:
        if not isinstance(item, dict):
            continue
        line = item.get("line")
        number = line if isinstance(line, int) and 0 < line <= len(sql_lines) else None
        rows.append(
            LintRow(
                line=line if isinstance(line, int) else None,
                level=str(item.get("level") or "warning"),
                message=str(item.get("message") or ""),
                sql_line=sql_lines[number - 1].strip() if number is not None else "",
            )
        )
    return rows


def _live(user: Any, rollout: Rollout) -> RolloutLive:
    members = Action.objects.filter(rollout_id=rollout.pk)
    cutoff = timezone.now() - timedelta(seconds=heartbeat_limit())
    silent = members.silent_since(cutoff)
    by_wave: dict[int | None, dict[str, int]] = {}
    for item in members.values("wave", "status").annotate(n=Count("id")).order_by():
        by_wave.setdefault(item["wave"], {})[item["status"]] = item["n"]
    # A run whose worker went silent is interrupted, as the action pages say.
    for gone in silent.values("wave").annotate(n=Count("id")).order_by():
        counts = by_wave.setdefault(gone["wave"], {})
        counts[Action.Status.RUNNING] = counts.get(Action.Status.RUNNING, 0) - gone["n"]
        counts[Action.Status.INTERRUPTED] = counts.get(Action.Status.INTERRUPTED, 0) + gone["n"]
    overall: dict[str, int] = {}
    for counts in by_wave.values():
        for status, n in counts.items():
            overall[status] = overall.get(status, 0) + n
    total = sum(rollout.wave_sizes)
    done = sum(n for status, n in overall.items() if status in Action.FINISHED)
    steering = (can_request(user) or can_approve(user)) and not rollout.is_finished
    open_now = rollout.status in (Rollout.Status.RUNNING, Rollout.Status.PAUSED)
    broke = members.filter(Q(status__in=BROKE) | Q(pk__in=silent.values("pk")))
    return RolloutLive(
        rollout_id=rollout.pk,
        status=rollout.status,
        status_label=rollout.get_status_display(),
        current_wave=rollout.current_wave,
        waves=[
            WaveRow(
                number=number,
                size=size,
                counts=_ordered(by_wave.get(number, {})),
                current=open_now and number == rollout.current_wave,
            )
            for number, size in enumerate(rollout.wave_sizes, start=1)
        ],
        counts=_ordered(overall),
        total=total,
        done=done,
        done_label=f"{done} of {total} member{'s' if total != 1 else ''} finished",
        failed=_failed_rows(broke, set(rollout.skipped)),
        failed_more=max(0, broke.count() - FAILED_SHOWN),
        paused_reason=rollout.paused_reason,
        error=rollout.error,
        may_pause=steering and rollout.status == Rollout.Status.RUNNING,
        may_resume=steering and rollout.status == Rollout.Status.PAUSED,
        may_cancel=steering,
        pause_url=reverse("rollout-pause", args=[rollout.pk]),
        resume_url=reverse("rollout-resume", args=[rollout.pk]),
        cancel_url=reverse("rollout-cancel", args=[rollout.pk]),
        poll_url=None if rollout.is_finished else reverse("rollout-live", args=[rollout.pk]),
    )


def _failed_rows(broke: Any, skipped: set[str]) -> list[FailedRow]:
    rows = []
    fields = ("environment", "wave", "status", "error", "worker", "started_at", "heartbeat_at")
    for action in broke.only(*fields).order_by("wave", "environment")[:FAILED_SHOWN]:
        status, label = status_shown(action)
        error = action.error or (label if status != action.status else "")
        rows.append(
            FailedRow(
                member=action.environment,
                wave=action.wave,
                status=status,
                status_label=label,
                error=error if len(error) <= ERROR_SHOWN else "…" + error[-ERROR_SHOWN:],
                url=reverse("action-detail", args=[action.pk]),
                skipped=action.environment in skipped,
            )
        )
    return rows


def _ordered(counts: dict[str, int]) -> list[StateCount]:
    known: list[str] = [s for s in STATE_ORDER if counts.get(s)]
    others = sorted(s for s, n in counts.items() if n and s not in STATE_ORDER)
    return [
        StateCount(status=s, label=STATE_LABELS.get(s, s), count=counts[s]) for s in known + others
    ]


def _url(name: str, arg: str) -> str:
    """Return a page's URL, or "" where that page is not part of this build."""
    try:
        return reverse(name, args=[arg])
    except NoReverseMatch:
        return ""
