"""The multiple-heads guard of a project: its accidental forks and where each head is applied."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dashboard import scripts
from dashboard.config import ConfigError, DashboardConfig, Project, current_config
from dashboard.history.heads import HeadsReport, heads_report


@dataclass(frozen=True)
class ForkBanner:
    """One accidental fork as the banner says it."""

    labels: tuple[str, ...]
    heads: tuple[str, ...]
    # (head, places that applied it, places that applied part of its own branch)
    places: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]
    where: str
    merge_command: str
    reparent: str
    unread: tuple[str, ...] = ()  # environments no read succeeded in: heads unknown there


@dataclass(frozen=True)
class HeadsBanner:
    """A project's banner: its heads that no branch label separates, and how to join them."""

    project: str
    forks: tuple[ForkBanner, ...]


def applied_places(
    config: DashboardConfig, project: str
) -> tuple[dict[str, list[list[str]]], list[str]]:
    """Return each environment's (and fleet's) version table heads, as last read and stored.

    And the environments and fleet members of the project no read succeeded in.
    """
    from dashboard.selectors.status import READ_STATES, newest_per_environment

    places: dict[str, list[str]] = {env.name: [env.name] for env in config.environments_of(project)}
    for fleet in config.fleets_of(project):
        places[f"fleet {fleet.name}"] = [m.name for m in config.members_of(fleet.name)]
    names = [name for members in places.values() for name in members]
    # The newest snapshot that read the version table: an unreachable read knows no heads.
    newest = newest_per_environment(names, states=READ_STATES)
    found: dict[str, list[list[str]]] = {}
    unread: list[str] = []
    for place, members in places.items():
        found[place] = []
        for name in members:
            snap = newest.get(name)
            if snap is None or snap.project != project:
                unread.append(name)  # never read, or read while it belonged to another project
            else:
                found[place].append(list(snap.heads))
    return found, unread


def project_report(
    project: Project, history: scripts.LoadedHistory, config: DashboardConfig | None
) -> HeadsReport:
    """Return the project's heads report; where heads are applied when a config is given."""
    report = heads_report(history.graph)
    if report.ok or config is None:
        return report  # one head per branch: no snapshot needs reading
    applied, unread = applied_places(config, project.name)
    return heads_report(history.graph, applied, unread)


def banner_of(
    project: Project, history: scripts.LoadedHistory, report: HeadsReport
) -> HeadsBanner | None:
    """Return the banner of a report, or None when every head is alone on its branch."""
    if report.ok:
        return None
    ini = str(project.alembic_ini) if project.alembic_ini else None
    forks = []
    for fork in report.forks:
        text = fork.reparent_text()
        if fork.reparent is not None and fork.reparent.path:
            text = text.replace(fork.reparent.path, _relative(fork.reparent.path, history))
        forks.append(
            ForkBanner(
                labels=fork.labels,
                heads=tuple(head.revision for head in fork.heads),
                places=tuple((head.revision, head.applied, head.partly) for head in fork.heads),
                where=fork.where_text(known=report.known),
                merge_command=fork.merge_command(ini),
                reparent=text,
                unread=fork.unread,
            )
        )
    return HeadsBanner(project=project.name, forks=tuple(forks))


def heads_banner(
    *, project: str, history: scripts.LoadedHistory | None = None
) -> HeadsBanner | None:
    """Return a configured project's heads banner; None when all is well or it cannot be read.

    A page that loaded the history already passes it: on a long history, checking every
    file again costs more than the rest of the page.
    """
    try:
        config = current_config()
        found = config.projects.get(project)
        if found is None:
            return None
        # Read statically, like the graph page: the web server never runs project code.
        if history is None:
            history = scripts.load_project_files(found)
    except (ConfigError, scripts.ScriptLocationError, OSError):
        return None  # the pages say why the history cannot be read
    return banner_of(found, history, project_report(found, history, config))


def heads_banners(*, skip: Iterable[str] = ()) -> list[HeadsBanner]:
    """Return the banners of every configured project (but those skipped) with accidental heads."""
    try:
        names = sorted(set(current_config().projects) - set(skip))
    except ConfigError:
        return []
    return [banner for name in names if (banner := heads_banner(project=name)) is not None]


def heads_guard_json(*, project: str) -> dict[str, Any]:
    """Return the API's `heads_guard` field: ok, and each fork with its heads and commands."""
    banner = heads_banner(project=project)
    if banner is None:
        return {"ok": True, "forks": []}
    forks = banner.forks
    return {
        "ok": False,
        "forks": [
            {
                "labels": list(fork.labels),
                "heads": [
                    {"revision": head, "applied": list(applied), "partly": list(partly)}
                    for head, applied, partly in fork.places
                ],
                "where": fork.where,
                "merge_command": fork.merge_command,
                "reparent": fork.reparent or None,
                "unread": list(fork.unread),
            }
            for fork in forks
        ],
    }


def _relative(path: str, history: scripts.LoadedHistory) -> str:
    try:
        return os.path.relpath(path, history.script_location).replace(os.sep, "/")
    except ValueError:
        return path
