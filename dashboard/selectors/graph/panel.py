"""Read one revision's side panel and the graph API document from a drawn history."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dashboard.history import Graph
from dashboard.selectors.graph.links import SHORT_ID, _badges, _link, _tags, graph_url, revision_url
from dashboard.selectors.graph.loaded import (
    _TOKEN,
    GraphNotFound,
    _Drawn,
    _drawn_project,
    _relative_path,
)
from dashboard.selectors.graph.records import Badge, RevisionPanel


def revision_panel(*, project: str, revision: str) -> RevisionPanel:
    """Return the side panel of one revision (raises GraphNotFound for an unknown one)."""
    drawn = _drawn_project(project)
    if revision not in drawn.history.graph.revisions:
        raise GraphNotFound(
            f"There is no revision {revision!r} in project {project!r}."
            " Search the graph by id prefix or message instead."
        )
    return _panel(project, drawn, revision, _badges(project))


def _panel(
    project: str, drawn: _Drawn, rev: str, badges: Mapping[str, list[Badge]]
) -> RevisionPanel:
    history = drawn.history
    graph = history.graph
    item = graph.revisions[rev]
    depends = []
    for declared in item.depends_on:
        target = declared if declared in graph.revisions else _label_target(graph, declared)
        text = declared if target == declared else f"{declared} → {(target or '?')[:SHORT_ID]}"
        depends.append(_link(project, graph, target or declared, text=text))
    declared_labels = list(item.branch_labels)
    return RevisionPanel(
        project=project,
        revision=rev,
        short=rev[:SHORT_ID],
        message=item.message,
        docstring=item.docstring,
        path=_relative_path(item.path, history),
        create_date=item.create_date or "",
        tags=_tags(graph, rev, drawn.flagged),
        parents=[_link(project, graph, p) for p in item.down_revisions],
        children=[_link(project, graph, c) for c in graph.children(rev)],
        depends_on=depends,
        dependents=[_link(project, graph, d) for d in graph.dependents(rev)],
        declared_labels=declared_labels,
        inherited_labels=[label for label in graph.labels_of(rev) if label not in declared_labels],
        problems=_problems_of(drawn, rev),
        badges=badges.get(rev, []),
        graph_url=graph_url(project, revision=rev),
        panel_url=revision_url(project, rev),
    )


def _label_target(graph: Graph, label: str) -> str | None:
    for rev, item in graph.revisions.items():
        if label in item.branch_labels:
            return rev
    return None


def _problems_of(drawn: _Drawn, rev: str) -> list[str]:
    """Return the history's problems that name this revision or its file."""
    item = drawn.history.graph.revisions[rev]
    found = [
        shown
        for raw, shown in zip(drawn.raw_problems, drawn.problems, strict=True)
        if rev in _TOKEN.findall(raw) or (item.path and item.path in raw)
    ]
    own = [p for p in item.problems if not any(p in f for f in found)]
    return own + found


def graph_json(*, project: str) -> dict[str, Any]:
    """Return the API's graph document: heads, bases, revisions and problems."""
    drawn = _drawn_project(project)
    return {**drawn.history.graph.to_json(), "problems": drawn.raw_problems}
