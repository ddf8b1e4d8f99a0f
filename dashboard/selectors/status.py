"""Environment status for pages and the API, from stored snapshots: never reads an environment."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from django.db.models import OuterRef, Subquery

from dashboard.config import ConfigError, Environment, current_config
from dashboard.models import Snapshot

SHORT_ID = 12
HISTORY_CHANGES = 20
RECENT_READS = 10
# States whose pending list is a plan; in the others it is empty because nothing can be planned.
PLANNED_STATES = {Snapshot.State.CURRENT, Snapshot.State.BEHIND, Snapshot.State.UNINITIALIZED}


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
    snapshot: Snapshot | None
    heads: list[RevisionRow]
    pending_count: int

    @property
    def state(self) -> str | None:
        """Return the snapshot's state, or None when the environment was never read."""
        return self.snapshot.state if self.snapshot is not None else None

    @property
    def pending_label(self) -> str:
        """Return the pending count, or "" when the state plans nothing (unreachable, unknown)."""
        if self.snapshot is None or self.snapshot.state not in PLANNED_STATES:
            return ""
        return str(self.pending_count)

    @property
    def state_label(self) -> str:
        """Return the state as words."""
        return self.snapshot.get_state_display() if self.snapshot is not None else "not read yet"


@dataclass(frozen=True)
class ProjectRow:
    """One project, its heads as last seen, and its environments' cells in display order."""

    name: str
    description: str
    heads: list[RevisionRow]
    graph_url: str
    environments: list[EnvironmentCell]


@dataclass(frozen=True)
class Matrix:
    """The overview: every project's environments, or why the config cannot be read."""

    projects: list[ProjectRow]
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
    script_heads: list[RevisionRow]
    pending: list[RevisionRow]
    changes: list[Change]
    recent: list[Snapshot]
    last_error: Snapshot | None


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
        return Matrix(projects=[], config_error=str(exc))
    latest = _latest(config.ordered_environments())
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
                else [],
                graph_url=graph_url(project.name),
                environments=[_cell(env, latest.get(env.name)) for env in envs],
            )
        )
    return Matrix(projects=rows, config_error=None)


def environment_cell(*, name: str) -> EnvironmentCell | None:
    """Return one environment's cell, or None when the config does not have it."""
    env = current_config().environments.get(name)
    if env is None:
        return None
    return _cell(env, _latest([env]).get(env.name))


def environment_detail(*, name: str) -> EnvironmentDetail | None:
    """Return the environment page's content, or None when the config does not have it."""
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
    heads = latest.heads if latest else []
    return EnvironmentDetail(
        cell=_cell(env, latest),
        environment=env,
        display_url=env.display_url(),
        graph_url=graph_url(env.project, heads[0] if heads else None),
        script_heads=_revisions(env.project, latest.script_heads if latest else [], messages),
        pending=_revisions(env.project, latest.pending if latest else [], messages),
        changes=changes,
        recent=list(snapshots[:RECENT_READS]),
        last_error=snapshots.exclude(error="").first(),
    )


def environment_items() -> list[dict[str, Any]]:
    """Return the API's item for every configured environment (raises ConfigError)."""
    envs = current_config().ordered_environments()
    latest = _latest(envs)
    return [environment_item(env, latest.get(env.name)) for env in envs]


def environment_item_named(*, name: str) -> dict[str, Any] | None:
    """Return one environment's API item, or None when the config does not have it."""
    env = current_config().environments.get(name)
    if env is None:
        return None
    return environment_item(env, _latest([env]).get(env.name))


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
    if not projects:
        return {}
    newest = (
        Snapshot.objects.filter(environment=OuterRef("environment"))
        .order_by("-read_at", "-id")
        .values("id")[:1]
    )
    found = Snapshot.objects.filter(environment__in=projects, id=Subquery(newest))
    # Snapshots taken while the environment belonged to another project describe another
    # history: the environment counts as never read until it is read again.
    return {snap.environment: snap for snap in found if projects[snap.environment] == snap.project}


def _cell(env: Environment, snapshot: Snapshot | None) -> EnvironmentCell:
    return EnvironmentCell(
        name=env.name,
        project=env.project,
        description=env.description,
        snapshot=snapshot,
        heads=_revisions(env.project, snapshot.heads, snapshot.messages, snapshot.branch_labels)
        if snapshot
        else [],
        pending_count=len(snapshot.pending) if snapshot else 0,
    )


def _revisions(
    project: str,
    revisions: Iterable[str],
    messages: Mapping[str, str],
    branch_labels: Mapping[str, list[str]] | None = None,
) -> list[RevisionRow]:
    return [
        RevisionRow(
            revision=rev,
            short=rev[:SHORT_ID],
            message=messages.get(rev, ""),
            graph_url=graph_url(project, rev),
            branch_labels=tuple((branch_labels or {}).get(rev, ())),
        )
        for rev in revisions
    ]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
