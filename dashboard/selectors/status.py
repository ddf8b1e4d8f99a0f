"""Environment status for pages and the API, from stored snapshots: never reads an environment."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from django.db.models import Subquery
from django.urls import reverse

from dashboard import states
from dashboard.config import ConfigError, DashboardConfig, Environment, Fleet, current_config
from dashboard.models import SchemaCheck, Snapshot
from dashboard.templatetags.dashboard_tags import ago

if TYPE_CHECKING:
    from dashboard.selectors import drift as drift_selectors

SHORT_ID = 12
HISTORY_CHANGES = 20
RECENT_READS = 10
# Environments whose newest snapshots one statement finds: bounds its size and parameters.
NEWEST_BATCH = 200
# States whose pending list is a plan; in the others it is empty because nothing can be planned.
PLANNED_STATES = {Snapshot.State.CURRENT, Snapshot.State.BEHIND, Snapshot.State.UNINITIALIZED}
# States in which the version table was read, so the snapshot's heads are what it held.
READ_STATES = tuple(str(state) for state in states.READ_STATES)
# A member or environment no snapshot describes yet, where a state would stand.
UNREAD = "unread"
UNREAD_LABEL = "not read yet"
# The order a fleet's counts are shown in: at head first, then what needs a hand.
FLEET_STATES = (
    Snapshot.State.CURRENT,
    Snapshot.State.BEHIND,
    Snapshot.State.UNINITIALIZED,
    Snapshot.State.UNKNOWN,
    Snapshot.State.INVALID,
    Snapshot.State.UNREACHABLE,
    Snapshot.State.NOT_CONFIGURED,
)
STATE_LABELS = {**{str(s): s.label for s in FLEET_STATES}, UNREAD: UNREAD_LABEL}
# Revisions of behind members a fleet's overview row names; the rest are counted.
SHOWN_GROUPS = 3


# The overview caches its HTML by the Matrix it shows (templatetags/fragments.py): equal
# matrices must render equal HTML. So the Matrix, its rows and cells hold only what the page
# shows, as values and tuples (hashable, compared by value), never a model instance.


@dataclass(frozen=True)
class RevisionRow:
    """One revision as pages show it: id, short id, message and its place on the graph."""

    revision: str
    short: str
    message: str
    graph_url: str
    branch_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnvironmentCell:
    """One environment's latest snapshot, ready for a matrix cell."""

    name: str
    project: str
    description: str
    # The snapshot's state, or None when the environment was never read.
    state: str | None
    state_label: str
    detail: str
    heads: tuple[RevisionRow, ...]
    pending_count: int
    read_at: datetime | None
    # How long ago it was read, in words ("3 minutes ago"); "" when never read.
    read_ago: str
    # The latest schema check's badge, beside the revision state (part of the cache key).
    schema: drift_selectors.SchemaBadge | None = None
    # For the environment page; the overview shows only the values above (its cache key).
    snapshot: Snapshot | None = field(default=None, compare=False, repr=False)

    @property
    def pending_label(self) -> str:
        """Return the pending count, or "" when the state plans nothing (unreachable, unknown)."""
        if self.state not in PLANNED_STATES:
            return ""
        return str(self.pending_count)


@dataclass(frozen=True)
class StateCount:
    """How many of a fleet's members are in one state, and the fleet page showing them."""

    state: str  # a snapshot state, or "unread"
    label: str
    count: int
    url: str


@dataclass(frozen=True)
class RevisionGroup:
    """Members at the same heads: the heads, how many, and the fleet page showing them."""

    revision: str  # the heads joined by ",": the fleet page's revision filter
    short: str
    count: int
    url: str


@dataclass(frozen=True)
class FleetRow:
    """One fleet as the overview shows it: its members counted by state, never one by one."""

    name: str
    project: str
    description: str
    url: str
    total: int
    counts: tuple[StateCount, ...]  # the states some member is in, in FLEET_STATES order
    behind: tuple[RevisionGroup, ...]  # the largest groups of behind members
    more_behind: int  # behind groups not shown
    drift: int
    drift_url: str
    problems: tuple[str, ...]
    oldest_read_at: datetime | None
    oldest_read_ago: str


@dataclass(frozen=True)
class ProjectRow:
    """One project, its heads as last seen, and its environments' cells in display order."""

    name: str
    description: str
    heads: tuple[RevisionRow, ...]
    graph_url: str
    environments: tuple[EnvironmentCell, ...]
    fleets: tuple[FleetRow, ...] = ()


@dataclass(frozen=True)
class Matrix:
    """The overview: every project's environments, or why the config cannot be read."""

    projects: tuple[ProjectRow, ...]
    config_error: str | None


@dataclass(frozen=True)
class Change:
    """A snapshot whose heads differ from the previous successful read's."""

    snapshot: Snapshot
    before: list[str] | None


@dataclass(frozen=True)
class EnvironmentDetail:
    """Everything the environment page shows."""

    cell: EnvironmentCell
    environment: Environment
    display_url: str
    graph_url: str
    script_heads: tuple[RevisionRow, ...]
    pending: tuple[RevisionRow, ...]
    changes: list[Change]
    recent: list[Snapshot]
    last_error: Snapshot | None
    # Why the latest read did not read the version table; "" when it did or none was made.
    unreadable: str = ""
    # When unreadable: the newest snapshot that did read it, and its heads.
    last_known: Snapshot | None = None
    last_known_heads: tuple[RevisionRow, ...] = ()
    # Whether `pending` is a plan, and if not, why it is not known.
    pending_known: bool = True
    pending_note: str = ""

    @property
    def actionable(self) -> bool:
        """Say whether the page may offer an upgrade or rollback: not while it cannot be read."""
        return not self.unreadable


def graph_url(project: str, revision: str | None = None) -> str:
    """Return the graph page's address for a project, focused on a revision."""
    path = f"/projects/{quote(project, safe='')}/graph"
    if not revision:
        return path
    # The rows around it, scrolled to its row: on a long history the revision's own block may
    # start far above it.
    return f"{path}?{urlencode({'around': revision})}#rev-{quote(revision, safe='/')}"


def latest_snapshots(project: str | None = None) -> dict[str, Snapshot]:
    """Return the newest snapshot of each configured environment (of one project), by name."""
    try:
        config = current_config()
    except ConfigError:
        return {}
    envs = config.environments_of(project) if project else config.ordered_environments()
    return latest_of(envs)


def status_matrix() -> Matrix:
    """Return every project with its environments' latest snapshots."""
    try:
        config = current_config()
    except ConfigError as exc:
        return Matrix(projects=(), config_error=str(exc))
    from dashboard.selectors import drift as drift_selectors  # its checks are heavy

    latest = latest_of(config.ordered_environments())
    badges = drift_selectors.schema_badges(config.ordered_environments())
    rows = []
    for project in sorted(config.projects.values(), key=lambda p: p.name):
        envs = config.environments_of(project.name)
        fleets = config.fleets_of(project.name)
        members = [m for fleet in fleets for m in config.members_of(fleet.name)]
        # The project's heads as last seen: members' reads count too.
        seen = [latest[env.name] for env in (*envs, *members) if env.name in latest]
        newest = max(seen, key=lambda snap: (snap.read_at, snap.pk), default=None)
        rows.append(
            ProjectRow(
                name=project.name,
                description=project.description,
                heads=_revisions(project.name, newest.script_heads, newest.messages)
                if newest
                else (),
                graph_url=graph_url(project.name),
                environments=tuple(
                    cell_of(env, latest.get(env.name), badges[env.name]) for env in envs
                ),
                fleets=tuple(fleet_row(config, fleet, latest, badges) for fleet in fleets),
            )
        )
    return Matrix(projects=tuple(rows), config_error=None)


def fleet_url(name: str, **filters: str) -> str:
    """Return the fleet page's address, with these filters."""
    path = reverse("fleet", args=[name])
    query = {key: value for key, value in filters.items() if value}
    return f"{path}?{urlencode(query)}" if query else path


def member_state(snapshot: Snapshot | None) -> str:
    """Return a member's state for counting: its snapshot's, or "unread"."""
    return snapshot.state if snapshot is not None else UNREAD


def revision_key(heads: Iterable[str]) -> str:
    """Return the heads as one revision filter value: sorted, joined by ","."""
    return ",".join(sorted(heads))


def state_counts(fleet: str, states_seen: Iterable[str]) -> tuple[StateCount, ...]:
    """Count members by state, in FLEET_STATES order (never read last), leaving out zeros."""
    counted = Counter(states_seen)
    return tuple(
        StateCount(
            state=state,
            label=STATE_LABELS[state],
            count=counted[state],
            url=fleet_url(fleet, state=state),
        )
        for state in (*map(str, FLEET_STATES), UNREAD)
        if counted[state]
    )


def revision_groups(fleet: str, heads_seen: Iterable[Iterable[str]]) -> list[RevisionGroup]:
    """Group members by their heads, largest group first."""
    counted = Counter(revision_key(heads) for heads in heads_seen)
    ordered = sorted(counted.items(), key=lambda item: (-item[1], item[0]))
    return [
        RevisionGroup(
            revision=key,
            short=" + ".join(rev[:SHORT_ID] for rev in key.split(",")) if key else "no revision",
            count=count,
            url=fleet_url(fleet, revision=key or "-"),
        )
        for key, count in ordered
    ]


def fleet_row(
    config: DashboardConfig,
    fleet: Fleet,
    latest: Mapping[str, Snapshot],
    badges: Mapping[str, drift_selectors.SchemaBadge],
) -> FleetRow:
    """Return a fleet's overview row from its members' snapshots and schema badges."""
    members = config.members_of(fleet.name)
    problems = fleet_problems(fleet, members)
    snapshots = [latest.get(member.name) for member in members]
    behind = revision_groups(
        fleet.name,
        (s.heads for s in snapshots if s is not None and s.state == Snapshot.State.BEHIND),
    )
    reads = [s.read_at for s in snapshots if s is not None]
    oldest = min(reads, default=None)
    drift = sum(
        1
        for m in members
        if (badge := badges.get(m.name)) is not None and badge.state == SchemaCheck.State.DRIFT
    )
    return FleetRow(
        name=fleet.name,
        project=fleet.project,
        description=fleet.description,
        url=fleet_url(fleet.name),
        total=len(members),
        counts=state_counts(fleet.name, map(member_state, snapshots)),
        behind=tuple(behind[:SHOWN_GROUPS]),
        more_behind=max(0, len(behind) - SHOWN_GROUPS),
        drift=drift,
        drift_url=fleet_url(fleet.name, schema=str(SchemaCheck.State.DRIFT)),
        problems=problems,
        oldest_read_at=oldest,
        oldest_read_ago=ago(oldest),
    )


def fleet_problems(fleet: Fleet, members: Iterable[Environment]) -> tuple[str, ...]:
    """Return why some of a fleet's members could not be made (bad lines, names, URLs)."""
    broken = [m.url_error for m in members if m.url_error is not None]
    if not broken:
        return fleet.problems
    # One URL template breaks every member alike: say it once, with how many.
    more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
    return (*fleet.problems, f"{broken[0]}{more}")


def environment_cell(*, name: str) -> EnvironmentCell | None:
    """Return one environment's cell, or None when the config does not have it."""
    env = current_config().environments.get(name)
    if env is None:
        return None
    from dashboard.selectors import drift as drift_selectors  # its checks are heavy

    badge = drift_selectors.schema_badges([env])[name]
    return cell_of(env, latest_of([env]).get(env.name), badge)


def environment_detail(
    *, name: str, schema: drift_selectors.SchemaBadge | None = None
) -> EnvironmentDetail | None:
    """Return the environment page's content, or None when the config does not have it.

    schema: the badge the page already read with its schema section (else it is read here).
    """
    from dashboard.selectors import drift as drift_selectors  # its checks are heavy

    env = current_config().environments.get(name)
    if env is None:
        return None
    snapshots = Snapshot.objects.filter(environment=name, project=env.project)
    latest = snapshots.first()
    changed = list(snapshots.filter(changed=True)[: HISTORY_CHANGES + 1])
    changes = [
        Change(snapshot=snap, before=changed[i + 1].heads if i + 1 < len(changed) else None)
        for i, snap in enumerate(changed[:HISTORY_CHANGES])
    ]
    # Two refreshes racing can both record the same change; show it once.
    changes = [change for change in changes if change.before != change.snapshot.heads]
    messages = latest.messages if latest else {}
    unreadable = unreadable_reason(name, latest)
    last_known = last_read(name, env.project) if unreadable else None
    heads = (last_known or latest).heads if latest else []
    return EnvironmentDetail(
        cell=cell_of(env, latest, schema or drift_selectors.schema_badges([env])[name]),
        environment=env,
        display_url=env.display_url(),
        graph_url=graph_url(env.project, heads[0] if heads else None),
        script_heads=_revisions(env.project, latest.script_heads if latest else [], messages),
        pending=_revisions(env.project, latest.pending if latest else [], messages),
        changes=changes,
        recent=list(snapshots[:RECENT_READS]),
        last_error=snapshots.exclude(error="").first(),
        unreadable=unreadable,
        last_known=last_known,
        last_known_heads=tuple(
            _revisions(env.project, last_known.heads, last_known.messages, last_known.branch_labels)
        )
        if last_known
        else (),
        pending_known=latest is None or latest.state in PLANNED_STATES,
        pending_note=_pending_note(name, latest, unreadable),
    )


def unreadable_reason(name: str, snapshot: Snapshot | None) -> str:
    """Say why this latest snapshot did not read the version table; "" when it did (or none)."""
    if snapshot is None or snapshot.state in READ_STATES:
        return ""
    return (
        f"{name} cannot be read now ({snapshot.detail or snapshot.get_state_display()}),"
        " so no action can be requested: a plan starts from heads read from it"
    )


def last_read(name: str, project: str) -> Snapshot | None:
    """Return the newest snapshot of the environment that read its version table."""
    return (
        Snapshot.objects.filter(environment=name, project=project, state__in=READ_STATES)
        .order_by("-read_at", "-id")
        .first()
    )


def _pending_note(name: str, latest: Snapshot | None, unreadable: str) -> str:
    if latest is None or latest.state in PLANNED_STATES:
        return ""
    if unreadable:
        return f"Unknown until {name} can be read again."
    return f"Unknown: nothing can be planned from these heads ({latest.detail})."


def environment_items() -> list[dict[str, Any]]:
    """Return the API's item for every configured environment (raises ConfigError)."""
    envs = current_config().ordered_environments()
    latest = latest_of(envs)
    return with_schema(envs, [environment_item(env, latest.get(env.name)) for env in envs])


def environment_item_named(*, name: str) -> dict[str, Any] | None:
    """Return one environment's API item, or None when the config does not have it."""
    env = current_config().environments.get(name)
    if env is None:
        return None
    return with_schema([env], [environment_item(env, latest_of([env]).get(env.name))])[0]


def with_schema(envs: list[Environment], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each item's `schema` from its environment's latest stored check (never checks now)."""
    from dashboard.selectors import drift as drift_selectors  # its checks are heavy

    summaries = drift_selectors.schema_summaries(envs)
    for env, item in zip(envs, items, strict=True):
        item["schema"] = summaries[env.name]
    return items


def environment_item(env: Environment, snapshot: Snapshot | None) -> dict[str, Any]:
    """Return one environment as JSON: its latest snapshot, or nulls when never read."""
    if snapshot is None:
        return {
            "environment": env.name,
            "project": env.project,
            "heads": [],
            "branch_labels": {},
            "state": None,
            "pending": [],
            "detail": "not read yet",
            "error": None,
            "latency_ms": None,
            "read_at": None,
        }
    return snapshot_item(snapshot)


def snapshot_item(snapshot: Snapshot) -> dict[str, Any]:
    """Return a snapshot as the JSON item the API and `manage.py status --json` print."""
    return {
        "environment": snapshot.environment,
        "project": snapshot.project,
        "heads": list(snapshot.heads),
        "branch_labels": dict(snapshot.branch_labels),
        "state": snapshot.state,
        "pending": list(snapshot.pending),
        "detail": snapshot.detail,
        "error": snapshot.error or None,
        "latency_ms": round(snapshot.latency_ms, 1) if snapshot.latency_ms is not None else None,
        "read_at": _iso(snapshot.read_at),
    }


def latest_of(envs: Iterable[Environment]) -> dict[str, Snapshot]:
    """Return the newest snapshot per environment, ignoring ones taken for another project."""
    projects = {env.name: env.project for env in envs}
    found = newest_per_environment(projects)
    # Snapshots taken while the environment belonged to another project describe another
    # history: the environment counts as never read until it is read again.
    return {name: snap for name, snap in found.items() if projects[name] == snap.project}


def newest_per_environment(
    names: Iterable[str], *, states: Iterable[str] | None = None
) -> dict[str, Snapshot]:
    """Return each named environment's newest snapshot (in these states), by name."""
    names = tuple(dict.fromkeys(names))
    wanted = tuple(sorted(states)) if states is not None else None
    found: dict[str, Snapshot] = {}
    for start in range(0, len(names), NEWEST_BATCH):
        sql, params = _newest_sql(names[start : start + NEWEST_BATCH], wanted)
        found.update((snap.environment, snap) for snap in Snapshot.objects.raw(sql, params))
    return found


@lru_cache(maxsize=32)
def _newest_sql(
    names: tuple[str, ...], states: tuple[str, ...] | None
) -> tuple[str, tuple[Any, ...]]:
    """Compile the query for these environments' newest snapshots once per process."""
    # One uncorrelated subquery per environment, each a seek on (environment, -read_at): the
    # cost follows the number of environments, never the length of their history. Building
    # it through the ORM costs more than running it, hence the cache of its SQL.
    snapshots = (
        Snapshot.objects.all() if states is None else Snapshot.objects.filter(state__in=states)
    )
    newest = [
        Subquery(snapshots.filter(environment=name).order_by("-read_at", "-id").values("id")[:1])
        for name in names
    ]
    # django-stubs types an __in lookup's values as plain values; expressions are allowed too.
    found = Snapshot.objects.filter(id__in=newest)  # type: ignore[misc]
    sql, params = found.query.sql_with_params()
    return sql, tuple(params)


def cell_of(
    env: Environment, snapshot: Snapshot | None, schema: drift_selectors.SchemaBadge | None = None
) -> EnvironmentCell:
    """Return an environment's cell from its latest snapshot (None: never read) and badge."""
    if snapshot is None:
        return EnvironmentCell(
            name=env.name,
            project=env.project,
            description=env.description,
            state=None,
            state_label="not read yet",
            detail="",
            heads=(),
            pending_count=0,
            read_at=None,
            read_ago="",
            schema=schema,
        )
    return EnvironmentCell(
        name=env.name,
        project=env.project,
        description=env.description,
        state=snapshot.state,
        state_label=snapshot.get_state_display(),
        detail=snapshot.detail,
        heads=_revisions(env.project, snapshot.heads, snapshot.messages, snapshot.branch_labels),
        pending_count=len(snapshot.pending),
        read_at=snapshot.read_at,
        read_ago=ago(snapshot.read_at),
        schema=schema,
        snapshot=snapshot,
    )


def _revisions(
    project: str,
    revisions: Iterable[str],
    messages: Mapping[str, str],
    branch_labels: Mapping[str, list[str]] | None = None,
) -> tuple[RevisionRow, ...]:
    return tuple(
        RevisionRow(
            revision=rev,
            short=rev[:SHORT_ID],
            message=messages.get(rev, ""),
            graph_url=graph_url(project, rev),
            branch_labels=tuple((branch_labels or {}).get(rev, ())),
        )
        for rev in revisions
    )


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
