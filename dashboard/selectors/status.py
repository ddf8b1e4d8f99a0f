"""Environment status for pages and the API, from stored snapshots: never reads an environment."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlencode

from django.db.models import Subquery

from dashboard import states
from dashboard.config import ConfigError, Environment, current_config
from dashboard.models import Snapshot
from dashboard.selectors import drift as drift_selectors
from dashboard.templatetags.dashboard_tags import ago

SHORT_ID = 12
HISTORY_CHANGES = 20
RECENT_READS = 10
# Environments whose newest snapshots one statement finds: bounds its size and parameters.
NEWEST_BATCH = 200
# States whose pending list is a plan; in the others it is empty because nothing can be planned.
PLANNED_STATES = {Snapshot.State.CURRENT, Snapshot.State.BEHIND, Snapshot.State.UNINITIALIZED}
# States in which the version table was read, so the snapshot's heads are what it held.
READ_STATES = tuple(str(state) for state in states.READ_STATES)


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
class ProjectRow:
    """One project, its heads as last seen, and its environments' cells in display order."""

    name: str
    description: str
    heads: tuple[RevisionRow, ...]
    graph_url: str
    environments: tuple[EnvironmentCell, ...]


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
    return f"{path}?{urlencode({'rev': revision})}" if revision else path


def latest_snapshots(project: str | None = None) -> dict[str, Snapshot]:
    """Return the newest snapshot of each configured environment (of one project), by name."""
    try:
        config = current_config()
    except ConfigError:
        return {}
    envs = config.environments_of(project) if project else config.ordered_environments()
    return _latest(envs)


def status_matrix() -> Matrix:
    """Return every project with its environments' latest snapshots."""
    try:
        config = current_config()
    except ConfigError as exc:
        return Matrix(projects=(), config_error=str(exc))
    latest = _latest(config.ordered_environments())
    badges = drift_selectors.schema_badges(config.ordered_environments())
    rows = []
    for project in sorted(config.projects.values(), key=lambda p: p.name):
        envs = config.environments_of(project.name)
        seen = [latest[env.name] for env in envs if env.name in latest]
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
                    _cell(env, latest.get(env.name), badges[env.name]) for env in envs
                ),
            )
        )
    return Matrix(projects=tuple(rows), config_error=None)


def environment_cell(*, name: str) -> EnvironmentCell | None:
    """Return one environment's cell, or None when the config does not have it."""
    env = current_config().environments.get(name)
    if env is None:
        return None
    badge = drift_selectors.schema_badges([env])[name]
    return _cell(env, _latest([env]).get(env.name), badge)


def environment_detail(
    *, name: str, schema: drift_selectors.SchemaBadge | None = None
) -> EnvironmentDetail | None:
    """Return the environment page's content, or None when the config does not have it.

    schema: the badge the page already read with its schema section (else it is read here).
    """
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
        cell=_cell(env, latest, schema or drift_selectors.schema_badges([env])[name]),
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
    latest = _latest(envs)
    return with_schema(envs, [environment_item(env, latest.get(env.name)) for env in envs])


def environment_item_named(*, name: str) -> dict[str, Any] | None:
    """Return one environment's API item, or None when the config does not have it."""
    env = current_config().environments.get(name)
    if env is None:
        return None
    return with_schema([env], [environment_item(env, _latest([env]).get(env.name))])[0]


def with_schema(envs: list[Environment], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each item's `schema` from its environment's latest stored check (never checks now)."""
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


def _latest(envs: Iterable[Environment]) -> dict[str, Snapshot]:
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


def _cell(
    env: Environment, snapshot: Snapshot | None, schema: drift_selectors.SchemaBadge | None = None
) -> EnvironmentCell:
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
