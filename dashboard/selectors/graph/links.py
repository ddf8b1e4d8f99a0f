"""Build the addresses, links, badges and tags that graph rows and panels share."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from django.urls import reverse

from dashboard.config import current_config
from dashboard.history import Graph
from dashboard.models import Snapshot
from dashboard.selectors.graph.records import Badge, ProjectLink, RevisionLink, Tag
from dashboard.selectors.status import latest_snapshots

SHORT_ID = 12


def graph_url(
    project: str,
    *,
    revision: str | None = None,
    start: int | None = None,
    around: str | None = None,
    open_rows: int | None = None,
) -> str:
    """Return the graph page's address: focused on a revision, around one, or from a row."""
    path = reverse("graph", args=[project])
    query = {}
    if revision:
        query["rev"] = revision
    if around:
        query["around"] = around
    if start:
        query["start"] = str(start)
    if open_rows:
        query["open"] = str(open_rows)
    address = f"{path}?{urlencode(query)}" if query else path
    # The fragment scrolls to the revision's row even without JavaScript.
    return f"{address}#rev-{quote(around, safe='/')}" if around else address


def revision_url(project: str, revision: str) -> str:
    """Return the revision panel's address."""
    return reverse("revision", args=[project, revision])


def first_project_url() -> str | None:
    """Return the graph address of the first project by name, or None when there is none."""
    names = sorted(current_config().projects)
    return graph_url(names[0]) if names else None


def _badges(project: str) -> dict[str, list[Badge]]:
    """Return the environments' badges by the revision their version table holds."""
    latest = latest_snapshots(project)
    found: dict[str, list[Badge]] = {}
    for env in current_config().environments_of(project):
        snapshot: Snapshot | None = latest.get(env.name)
        if snapshot is None:
            continue
        badge = Badge(
            environment=env.name,
            state=snapshot.state,
            state_label=snapshot.get_state_display(),
            url=reverse("environment", args=[env.name]),
        )
        for head in snapshot.heads:
            found.setdefault(head, []).append(badge)
    return found


def _link(project: str, graph: Graph, rev: str, *, text: str = "") -> RevisionLink:
    item = graph.revisions.get(rev)
    return RevisionLink(
        revision=rev,
        short=rev[:SHORT_ID],
        message=item.message if item else "",
        panel_url=revision_url(project, rev),
        graph_url=graph_url(project, revision=rev),
        text=text or rev[:SHORT_ID],
        exists=item is not None,
    )


def _tags(graph: Graph, rev: str, flagged: set[str]) -> list[Tag]:
    tags = []
    if graph.is_head(rev):
        tags.append(Tag("head", "tag-head"))
    if graph.is_base(rev):
        tags.append(Tag("base", "tag-base"))
    if graph.is_merge_point(rev):
        tags.append(Tag("merge point", "tag-merge"))
    if graph.is_branch_point(rev):
        tags.append(Tag("branch point", "tag-branch"))
    if graph.revisions[rev].unreadable:
        tags.append(Tag("cannot be parsed", "tag-problem tag-unreadable"))
    elif rev in flagged:
        tags.append(Tag("problem", "tag-problem"))
    return tags


def _row_labels(graph: Graph, rev: str) -> list[Tag]:
    """Return declared labels, and on heads the labels they inherit, so each branch is named."""
    declared = graph.revisions[rev].branch_labels
    labels = [Tag(label, "label") for label in declared]
    if graph.is_head(rev):
        labels += [
            Tag(label, "label inherited") for label in graph.labels_of(rev) if label not in declared
        ]
    return labels


def _projects(current: str) -> list[ProjectLink]:
    names = sorted(current_config().projects)
    return [ProjectLink(name, graph_url(name), name == current) for name in names]
