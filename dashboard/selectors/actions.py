"""Actions for pages: the action page, its live progress, and the actions list."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.core.paginator import Page, Paginator
from django.db.models import Q
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.safestring import SafeString

from dashboard.config import ConfigError, Project, current_config
from dashboard.history import Graph
from dashboard.models import Action, ActionQuerySet, Approval
from dashboard.roles import ADMIN, can_approve, can_request, role_of
from dashboard.runner.monitor import heartbeat_limit
from dashboard.scripts import ScriptLocationError, load_project_files
from dashboard.selectors.sql import highlight_sql
from dashboard.services import holding

SHORT_ID = 12
LOG_TAIL = 30
PER_PAGE = 50
DIRECTION_LABELS = {"upgrade": "Upgrade", "downgrade": "Roll back", "stamp": "Stamp"}


@dataclass(frozen=True)
class PlanRow:
    """One revision of an action's plan, in run order."""

    position: int
    revision: str
    short: str
    message: str
    labels: str


@dataclass(frozen=True)
class LintRow:
    """One lock-risk warning on the SQL, with the line it points at."""

    line: int | None
    level: str
    message: str
    sql_line: str


@dataclass(frozen=True)
class ApprovalRow:
    """One approver's decision as the action page lists it."""

    username: str
    decision: str
    comment: str
    created_at: datetime
    for_this_plan: bool


@dataclass(frozen=True)
class BlockerRow:
    """One session in a run's way, in words: what it does, who it is, its query."""

    kind: str
    text: str  # "waiting: pid 4242, idle in transaction for 6 min, holds AccessShareLock on posts"
    who: str  # "user app, application psql, from 10.0.0.7"
    query: str


@dataclass(frozen=True)
class Progress:
    """The live part of the action page: status, i of n, the log's tail and the result."""

    action_id: int
    status: str
    status_label: str
    cancelling: str
    done: int  # revisions finished: the one running counts once it is through
    total: int
    count_label: str  # "running 2 of 5 revisions", "5 of 5 revisions"...
    log_tail: str
    log_lines: int
    shown_lines: int
    finished: bool
    after_heads: list[str] | None
    error: str
    may_cancel: bool
    poll_url: str | None
    cancel_url: str
    # The sessions in the run's way as the worker last saw them; kept once the run ended.
    blockers: list[BlockerRow] = field(default_factory=list)
    blockers_at: datetime | None = None


@dataclass(frozen=True)
class Review:
    """The SQL under review, its warnings, and the approval forms when this user may decide."""

    action_id: int
    state: str  # "preparing", "ready" or "unavailable"
    sql_html: SafeString
    sql_sha256: str
    sql_note: str
    lint: list[LintRow]
    plan_hash: str
    may_decide: bool
    decided_by_you: str
    # Set when an approver looks at their own request: why there are no buttons.
    own_request_note: str
    poll_url: str | None
    approve_url: str
    reject_url: str
    # Why the plan can no longer run (code changed, heads moved): no decision is offered.
    no_longer_holds: str = ""


@dataclass(frozen=True)
class ActionPage:
    """Everything the action page shows."""

    action: Action
    direction_label: str
    plan: list[PlanRow]
    history_problem: str
    approvals: list[ApprovalRow]
    approvals_counted: int
    approvals_text: str
    progress: Progress
    review: Review
    environment_url: str
    list_url: str
    # The action this one is queued behind ("#3") and its page; "" when none.
    queued_behind: str = ""
    queued_behind_url: str = ""


@dataclass(frozen=True)
class ActionRow:
    """One action in the list."""

    id: int
    url: str
    environment: str
    direction_label: str
    target: str
    status: str
    status_label: str
    requested_by: str
    created_at: datetime
    approvals: str
    no_longer_holds: str = ""  # why its plan can no longer run, computed on read


@dataclass(frozen=True)
class Option:
    """One option of a filter's <select>."""

    value: str
    label: str
    selected: bool


@dataclass(frozen=True)
class ActionList:
    """The actions list: those awaiting this user's decision first, then the rest newest first."""

    awaiting: list[ActionRow]
    rows: list[ActionRow]
    page: Page[Action]
    environments: list[Option]
    statuses: list[Option]
    query: str
    previous_url: str | None
    next_url: str | None
    filtered: bool


def short(revision: str) -> str:
    """Return a revision id as pages show it."""
    return revision[:SHORT_ID]


def project_graph(project: Project) -> Graph:
    """Return the project's revision graph (static parse, cached by fingerprint)."""
    return load_project_files(project).graph


def silent_since(action: Action, *, now: datetime | None = None) -> datetime | None:
    """Return when a running action's worker last beat, if that is longer ago than the limit."""
    last = action.heartbeat_at or action.started_at
    if action.status != Action.Status.RUNNING or last is None:
        return None
    # The same rule housekeeping records it by (Action.objects.silent_since), applied on read:
    # with no worker left, no housekeeping runs to record it.
    cutoff = (now or timezone.now()) - timedelta(seconds=heartbeat_limit())
    return last if last < cutoff else None


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _status(action: Action, silent: datetime | None) -> tuple[str, str]:
    """Return the status and its words as pages show them: a silent run is interrupted."""
    if silent is None:
        return action.status, action.get_status_display()
    return Action.Status.INTERRUPTED, f"interrupted — worker silent since {_utc(silent)}"


def status_shown(action: Action, *, now: datetime | None = None) -> tuple[str, str]:
    """Return the status and its words as pages show them, for the command line too."""
    return _status(action, silent_since(action, now=now))


def with_status_shown(
    actions: ActionQuerySet, status: str, *, now: datetime | None = None
) -> ActionQuerySet:
    """Keep the actions whose status, as pages show it, is status: a silent run is interrupted."""
    cutoff = (now or timezone.now()) - timedelta(seconds=heartbeat_limit())
    silent = Action.objects.silent_since(cutoff)
    if status == Action.Status.INTERRUPTED:
        return actions.filter(Q(status=status) | Q(pk__in=silent.values("pk")))
    if status == Action.Status.RUNNING:
        return actions.filter(status=status).exclude(pk__in=silent.values("pk"))
    return actions.filter(status=status)


def _silent_error(action: Action, silent: datetime) -> str:
    return (
        f"the worker {action.worker or '(unknown)'} stopped heartbeating at {_utc(silent)}"
        f" (limit {heartbeat_limit():g} s); a worker's next housekeeping records the"
        f" interruption and reads {action.environment} again"
    )


def _may_cancel(user: Any, action: Action) -> bool:
    if action.is_finished or action.cancel_requested:
        return False
    if role_of(user) == ADMIN:
        return True
    return action.requested_by_account(user) and can_request(user)


def _counts(action: Action, status: str) -> dict[str, Any]:
    """Return how many revisions finished, of how many, in words that name the one running."""
    if action.direction == Action.Direction.STAMP:
        return {"done": 0, "total": 0, "count_label": "writes the version table only"}
    total = action.progress_total or len(action.plan)
    # progress_done counts the steps Alembic announced; each is announced before it runs.
    announced = min(action.progress_done, total)
    if status == Action.Status.SUCCEEDED:
        return {"done": total, "total": total, "count_label": f"{total} of {total} revisions"}
    if announced == 0:
        return {"done": 0, "total": total, "count_label": f"0 of {total} revisions"}
    done = announced - 1
    if status == Action.Status.RUNNING:
        label = f"running {announced} of {total} revisions"
    else:
        label = f"{done} of {total} revisions done; stopped in revision {announced}"
    return {"done": done, "total": total, "count_label": label}


def _progress(user: Any, action: Action) -> Progress:
    lines = action.log.splitlines()
    silent = silent_since(action)
    finished = action.is_finished or silent is not None
    status, status_label = _status(action, silent)
    return Progress(
        action_id=action.pk,
        status=status,
        status_label=status_label,
        cancelling=action.cancel_requested_by or "someone"
        if action.cancel_requested and not finished
        else "",
        **_counts(action, status),
        log_tail="\n".join(lines[-LOG_TAIL:]),
        log_lines=len(lines),
        shown_lines=min(len(lines), LOG_TAIL),
        finished=finished,
        after_heads=action.after_heads,
        error=action.error or (_silent_error(action, silent) if silent else ""),
        # Nobody would act on a cancel: the worker that polls for it is gone.
        may_cancel=silent is None and _may_cancel(user, action),
        # A silent run keeps polling until housekeeping records how it ended.
        poll_url=None if action.is_finished else reverse("action-progress", args=[action.pk]),
        cancel_url=reverse("action-cancel", args=[action.pk]),
        blockers=_blocker_rows(action),
        blockers_at=action.blockers_at,
    )


# What each kind of session in the way does to the run, as the row's first word.
BLOCKER_KINDS = {
    "blocking": "waiting",
    "lock_holder": "in the way",
    "old_transaction": "long transaction",
}


def _blocker_rows(action: Action) -> list[BlockerRow]:
    """Return the action's blockers in words, their ages brought up to now (or the run's end)."""
    if not action.blockers:
        return []
    later = 0.0
    if action.blockers_at is not None:
        moment = action.finished_at or timezone.now()
        later = max(0.0, (moment - action.blockers_at).total_seconds())
    return [blocker_row(item, later=later) for item in action.blockers if isinstance(item, dict)]


def blocker_row(item: dict[str, Any], *, later: float = 0.0) -> BlockerRow:
    """Say one session in the way; later is how long after the look the words are read."""
    pid = item.get("pid")
    if item.get("kind") == "run_lock":
        text = f"waiting for the run lock held by {_session(item)}"
        if who := _who(item):
            text += f" ({who})"
        if since := _moment(item.get("since")):
            text += f" since {since}"
        return BlockerRow(kind="run_lock", text=text, who="", query=str(item.get("query") or ""))
    kind = str(item.get("kind") or "")
    parts = [f"{BLOCKER_KINDS.get(kind, 'in the way')}: pid {'?' if pid is None else pid}"]
    state = str(item.get("state") or "")
    age = item.get("xact_age_s")
    if isinstance(age, int | float):
        parts.append(f"{state or 'in a transaction'} for {duration(age + later)}")
    elif state:
        parts.append(state)
    if item.get("lock") and item.get("table"):
        parts.append(f"holds {item['lock']} on {item['table']}")
    return BlockerRow(
        kind=kind, text=", ".join(parts), who=_who(item), query=str(item.get("query") or "")
    )


def run_lock_text(holder: dict[str, Any]) -> str:
    """Say who holds an environment's run lock, for its page; "" when nobody does."""
    if not holder:
        return ""
    details = [part for part in (_who(holder), _since(holder)) if part]
    text = f"run lock held by {_session(holder)}"
    return f"{text} ({', '.join(details)})" if details else text


def duration(seconds: float) -> str:
    """Say a duration roughly: "40 s", "6 min", "2 h 5 min"."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _session(holder: dict[str, Any]) -> str:
    """Name the session holding a lock: "pid 42" (MariaDB: "connection id 42")."""
    pid = holder.get("pid")
    return "another session" if pid is None else f"{holder.get('noun') or 'pid'} {pid}"


def _who(item: dict[str, Any]) -> str:
    """Say who a session is: "user u, application a, from h", leaving out what is unknown."""
    parts = []
    if user := item.get("user"):
        parts.append(f"user {user}")
    if application := item.get("application"):
        parts.append(f"application {application}")
    if client := item.get("client"):
        parts.append(f"from {client}")
    return ", ".join(parts)


def _since(holder: dict[str, Any]) -> str:
    moment = _moment(holder.get("since"))
    return f"since {moment}" if moment else ""


def _moment(value: object) -> str:
    """Return an ISO moment as the pages write one ("2026-05-04 13:56:31 UTC"), or as given."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _lint_rows(action: Action) -> list[LintRow]:
    sql_lines = action.sql.splitlines()
    rows = []
    for item in action.lint if isinstance(action.lint, list) else []:
        if not isinstance(item, dict):
            continue
        line = item.get("line")
        number = line if isinstance(line, int) else None
        rows.append(
            LintRow(
                line=number,
                level=str(item.get("level") or "warning"),
                message=str(item.get("message") or ""),
                sql_line=(
                    sql_lines[number - 1].strip()
                    if number is not None and 0 < number <= len(sql_lines)
                    else ""
                ),
            )
        )
    return rows


def _review(user: Any, action: Action, approvals: list[Approval], problem: str = "") -> Review:
    prepared = action.is_prepared
    if not prepared:
        state = "preparing"
    elif action.sql_sha256:
        state = "ready"
    else:
        state = "unavailable"
    mine = next((a for a in approvals if a.username == user.get_username()), None)
    may_decide = (
        can_approve(user)
        and not action.may_be_requested_by(user)
        and action.status == Action.Status.REQUESTED
        and prepared
        and mine is None
        and not problem
    )
    preparing_live = not prepared and not action.is_finished
    return Review(
        action_id=action.pk,
        state=state,
        sql_html=highlight_sql(action.sql),
        sql_sha256=action.sql_sha256,
        sql_note=action.sql_note,
        lint=_lint_rows(action),
        plan_hash=action.plan_hash,
        may_decide=may_decide,
        decided_by_you=mine.get_decision_display() if mine is not None else "",
        own_request_note=(
            "You requested this action, so another approver must decide on it."
            if can_approve(user)
            and action.may_be_requested_by(user)
            and action.status == Action.Status.REQUESTED
            else ""
        ),
        poll_url=reverse("action-detail", args=[action.pk]) if preparing_live else None,
        approve_url=reverse("action-approve", args=[action.pk]),
        reject_url=reverse("action-reject", args=[action.pk]),
        no_longer_holds=problem,
    )


def plan_problems(actions: list[Action]) -> dict[int, str]:
    """Return why these actions' plans no longer hold, by id: read, never recorded here.

    The services record it (superseded) when they next look; until then the pages must not
    offer a decision that could only fail.
    """
    try:
        config = current_config()
    except ConfigError:
        return {}
    return holding.plan_problems(actions, config, for_page=True)


def _queued_behind(action: Action) -> tuple[str, str]:
    ahead = action.queued_behind
    if ahead is None:
        return "", ""
    return f"#{ahead.pk}", reverse("action-detail", args=[ahead.pk])


def _plan_rows(action: Action) -> tuple[list[PlanRow], str]:
    graph: Graph | None = None
    problem = ""
    try:
        project = current_config().projects.get(action.project)
        if project is not None:
            graph = project_graph(project)
    except (ConfigError, ScriptLocationError) as exc:
        problem = f"Revision messages are unavailable: {exc}"
    rows = []
    for position, rev in enumerate(action.plan, start=1):
        known = graph is not None and rev in graph.revisions
        rows.append(
            PlanRow(
                position=position,
                revision=rev,
                short=short(rev),
                message=graph.revisions[rev].message if graph is not None and known else "",
                labels=", ".join(graph.labels_of(rev)) if graph is not None and known else "",
            )
        )
    return rows, problem


def action_page(*, user: Any, action_id: int) -> ActionPage | None:
    """Return the action page's content, or None when there is no such action."""
    action = Action.objects.filter(pk=action_id).first()
    if action is None:
        return None
    approvals = list(action.approvals.all())
    plan, problem = _plan_rows(action)
    behind, behind_url = _queued_behind(action)
    counted = sum(
        1
        for a in approvals
        if a.decision == Approval.Decision.APPROVE and a.plan_hash == action.plan_hash
    )
    return ActionPage(
        action=action,
        direction_label=DIRECTION_LABELS.get(action.direction, action.direction),
        plan=plan,
        history_problem=problem,
        approvals=[
            ApprovalRow(
                username=a.username,
                decision=a.decision,
                comment=a.comment,
                created_at=a.created_at,
                for_this_plan=a.plan_hash == action.plan_hash,
            )
            for a in approvals
        ],
        approvals_counted=counted,
        approvals_text=_approvals_text(counted, action.approvals_required),
        progress=_progress(user, action),
        review=_review(user, action, approvals, plan_problems([action]).get(action.pk, "")),
        environment_url=_environment_url(action.environment),
        list_url=reverse("action-list"),
        queued_behind=behind,
        queued_behind_url=behind_url,
    )


def _approvals_text(counted: int, required: int) -> str:
    return f"{counted} of {required}" if required else "none needed"


def _environment_url(name: str) -> str:
    try:
        return reverse("environment", args=[name])
    except NoReverseMatch:
        return ""


def action_progress(*, user: Any, action_id: int) -> Progress | None:
    """Return the live part of the action page, or None when there is no such action."""
    # Polled every second or two while a run lasts: leave the SQL and manifest behind.
    action = Action.objects.defer("sql", "lint", "bundle").filter(pk=action_id).first()
    return _progress(user, action) if action is not None else None


def _awaiting(user: Any, actions: ActionQuerySet) -> ActionQuerySet:
    """Return the actions this user could approve now: requested, prepared, not theirs, undecided."""
    if not can_approve(user):
        return actions.none()
    return (
        actions.awaiting_approval()
        .filter(prepared_at__isnull=False)
        .exclude(requested_by=user)
        .exclude(requested_by_name=user.get_username())
        .exclude(approvals__username=user.get_username())
    )


def _row(
    action: Action, counts: dict[int, int], now: datetime, problems: dict[int, str]
) -> ActionRow:
    counted = counts.get(action.pk, 0)
    status, status_label = _status(action, silent_since(action, now=now))
    return ActionRow(
        id=action.pk,
        url=reverse("action-detail", args=[action.pk]),
        environment=action.environment,
        direction_label=DIRECTION_LABELS.get(action.direction, action.direction),
        target=action.target if len(action.target) <= 40 else short(action.target),
        status=status,
        status_label=status_label,
        requested_by=action.requested_by_name,
        created_at=action.created_at,
        approvals=_approvals_text(counted, action.approvals_required),
        no_longer_holds=problems.get(action.pk, ""),
    )


def action_list(
    *, user: Any, environment: str = "", status: str = "", page: str | int | None = 1
) -> ActionList:
    """Return the actions list: awaiting this user's decision first, then the rest newest first."""
    # The list never shows the SQL, log or manifest, which can each be megabytes per row.
    actions = Action.objects.defer("sql", "log", "lint", "bundle")
    if environment:
        actions = actions.filter(environment=environment)
    now = timezone.now()
    if status:
        # The list calls a silent run interrupted, so its filter does too.
        actions = with_status_shown(actions, status, now=now)
    candidates = list(_awaiting(user, actions).order_by("created_at", "id"))
    problems = plan_problems(candidates)
    # A plan that no longer holds awaits nobody's decision: it is listed with the rest.
    awaiting = [a for a in candidates if a.pk not in problems]
    rest = actions.exclude(pk__in=[a.pk for a in awaiting]).order_by("-created_at", "-id")
    current = Paginator(rest, PER_PAGE).get_page(page)
    problems |= plan_problems([a for a in current.object_list if a.pk not in problems])
    counts = _approval_counts([*awaiting, *current.object_list])
    query = urlencode({k: v for k, v in (("environment", environment), ("status", status)) if v})
    return ActionList(
        awaiting=[_row(a, counts, now, problems) for a in awaiting],
        rows=[_row(a, counts, now, problems) for a in current.object_list],
        page=current,
        environments=_environment_options(environment),
        statuses=[Option("", "any status", not status)]
        + [Option(value, label, value == status) for value, label in Action.Status.choices],
        query=query,
        previous_url=_page_url(query, current.previous_page_number())
        if current.has_previous()
        else None,
        next_url=_page_url(query, current.next_page_number()) if current.has_next() else None,
        filtered=bool(environment or status),
    )


def _approval_counts(actions: list[Action]) -> dict[int, int]:
    """Return how many approvals for its current plan each action has, in one query."""
    hashes = {a.pk: a.plan_hash for a in actions}
    found = Approval.objects.filter(
        action_id__in=hashes, decision=Approval.Decision.APPROVE
    ).values_list("action_id", "plan_hash")
    counts: dict[int, int] = {}
    for action_id, plan_hash in found:
        if plan_hash == hashes[action_id]:
            counts[action_id] = counts.get(action_id, 0) + 1
    return counts


def _page_url(query: str, number: int) -> str:
    return "?" + "&".join(p for p in (query, f"page={number}") if p)


def _environment_options(selected: str) -> list[Option]:
    try:
        names = [env.name for env in current_config().ordered_environments()]
    except ConfigError:
        names = []
    seen = set(names)
    names += sorted(set(Action.objects.values_list("environment", flat=True).distinct()) - seen)
    if selected and selected not in names:
        names.append(selected)
    return [Option("", "every environment", not selected)] + [
        Option(name, name, name == selected) for name in names
    ]
