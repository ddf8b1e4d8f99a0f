"""Read environments now and store what their version tables said as snapshots."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from dashboard import scripts, states
from dashboard.config import DashboardConfig, Environment, Project, current_config
from dashboard.databases import versions
from dashboard.history import Graph, HistoryError
from dashboard.models import Snapshot
from dashboard.services import queue, superseding

logger = logging.getLogger(__name__)
DEFAULT_REFRESH_INTERVAL = 60.0
READ_STATES = [str(state) for state in states.READ_STATES]


class StatusError(Exception):
    """The status cannot be refreshed as asked."""


class UnknownEnvironment(StatusError):
    """An environment named by the caller is not in the config."""


@dataclass(frozen=True)
class ProjectHistory:
    """A project's revision graph, or why its script directory cannot be read."""

    graph: Graph | None
    error: str | None


def status_refresh(
    *, environments: Sequence[str] | None = None, max_workers: int = 16
) -> list[Snapshot]:
    """Read the named environments (default: all) now; store and return their snapshots."""
    # ConfigError and UnknownEnvironment reach the caller, which says why to its user.
    config = current_config()
    selected = environments_select(config, names=environments)
    histories = {
        name: project_history(config.projects[name])
        for name in dict.fromkeys(env.project for env in selected)
    }
    readings = versions.read_many(
        [(env, config.projects[env.project]) for env in selected],
        max_workers=max_workers,
        run_lock=True,
    )
    snapshots = [
        snapshot_record(
            environment=env,
            project=config.projects[env.project],
            reading=reading,
            history=histories[env.project],
        )
        for env, reading in zip(selected, readings, strict=True)
    ]
    _supersede_moved(snapshots)
    return snapshots


def _supersede_moved(snapshots: Sequence[Snapshot]) -> None:
    """Set aside open requests whose plans start elsewhere than the heads just read."""
    for snapshot in snapshots:
        if snapshot.state not in READ_STATES:
            continue
        try:
            superseding.actions_supersede_moved(
                environment=snapshot.environment, heads=snapshot.heads, read_at=snapshot.read_at
            )
        except Exception:  # the snapshot stands; housekeeping and the approval check again
            logger.exception("could not supersede requests on %s", snapshot.environment)


def environments_select(
    config: DashboardConfig, *, names: Sequence[str] | None
) -> list[Environment]:
    """Return the named environments in display order, or all of them when names is None."""
    if names is None:
        return config.ordered_environments()
    unknown = [name for name in dict.fromkeys(names) if name not in config.environments]
    if unknown:
        known = ", ".join(sorted(config.environments)) or "none"
        raise UnknownEnvironment(
            f"no environment named {', '.join(map(repr, unknown))} (configured: {known})"
        )
    wanted = set(names)
    return [env for env in config.ordered_environments() if env.name in wanted]


def project_history(project: Project) -> ProjectHistory:
    """Return a project's graph (cached by fingerprint), or why its scripts cannot be read."""
    try:
        if project.loader == "alembic":
            # Runs the project's revision files in a subprocess of the project's own Python.
            loaded = scripts.load_history_with_alembic(
                project.script_location,
                alembic_ini=project.alembic_ini,
                python=project.python or "python",
            )
        else:
            loaded = scripts.load_project_files(project)
    except (scripts.ScriptLocationError, HistoryError, OSError) as exc:
        return ProjectHistory(graph=None, error=str(exc) or type(exc).__name__)
    return ProjectHistory(graph=loaded.graph, error=None)


def snapshot_record(
    *,
    environment: Environment,
    project: Project,
    reading: versions.Reading,
    history: ProjectHistory,
) -> Snapshot:
    """Decide the state of one reading and store it, marking whether the heads changed."""
    status = states.environment_status(
        reading,
        history.graph,
        history_error=history.error,
        version_table=project.version_table,
    )
    graph = history.graph
    script_heads = list(graph.heads) if graph is not None else []
    messages = {}
    branch_labels = {}
    if graph is not None:
        for rev in (*reading.heads, *status.pending, *script_heads):
            if rev in graph.revisions:
                messages[rev] = graph.revisions[rev].message
        for rev in reading.heads:
            if rev in graph.revisions and (labels := graph.labels_of(rev)):
                branch_labels[rev] = list(labels)
    heads = list(reading.heads)
    with transaction.atomic():
        previous = (
            Snapshot.objects.filter(environment=environment.name, state__in=READ_STATES)
            .only("heads")
            .first()
        )
        changed = status.state in states.READ_STATES and (
            previous is None or previous.heads != heads
        )
        return Snapshot.objects.create(
            environment=environment.name,
            project=environment.project,
            heads=heads,
            state=str(status.state),
            pending=list(status.pending),
            script_heads=script_heads,
            messages=messages,
            branch_labels=branch_labels,
            detail=status.detail,
            error=status.error or "",
            latency_ms=reading.latency_ms,
            read_at=reading.read_at,
            changed=changed,
            run_lock=reading.run_lock,
        )


def snapshots_prune(*, older_than: timedelta) -> int:
    """Delete old snapshots that record no change, except each environment's newest; count them."""
    cutoff = timezone.now() - older_than
    newest = (
        Snapshot.objects.filter(environment=OuterRef("environment"))
        .order_by("-read_at", "-id")
        .values("id")[:1]
    )
    keep = Snapshot.objects.filter(id=Subquery(newest)).values("id")
    stale = Snapshot.objects.filter(read_at__lt=cutoff, changed=False).exclude(id__in=keep)
    deleted, _ = stale.delete()
    return deleted


def refresh_interval() -> float:
    """Return the seconds between periodic refreshes (settings.DASHBOARD_REFRESH_INTERVAL)."""
    return float(getattr(settings, "DASHBOARD_REFRESH_INTERVAL", DEFAULT_REFRESH_INTERVAL))


def schedule_periodic_refresh(*, delay: float = 0.0) -> bool:
    """Enqueue the periodic refresh after `delay` seconds unless one waits; say if this did."""
    return queue.schedule_once("refresh_status_periodically", delay=delay)
