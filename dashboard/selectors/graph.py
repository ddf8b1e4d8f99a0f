"""The revision graph page, the revision panel and the graph API, read from a project's files."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from django.urls import reverse

from dashboard import graphsvg, scripts
from dashboard.config import Project, current_config
from dashboard.history import Graph
from dashboard.layout import Layout, layout
from dashboard.models import Snapshot
from dashboard.selectors.status import latest_snapshots

WINDOW = 200
SHORT_ID = 12
SEARCH_LIMIT = 50
_TOKEN = re.compile(r"\w+")


class GraphNotFound(Exception):
    """The config has no such project, or the project's history no such revision."""


ALEMBIC_LOADER_NOTICE = (
    "This project is configured for Alembic's own loader, which runs the project's code;"
    " the web server never does, so this page shows what the files say when read without"
    " running them. `manage.py revisions --project {name}` shows Alembic's reading."
)


@dataclass(frozen=True)
class RevisionLink:
    """A revision as a link: to its panel, and to its place on the graph."""

    revision: str
    short: str
    message: str
    panel_url: str
    graph_url: str
    text: str = ""
    exists: bool = True


@dataclass(frozen=True)
class Badge:
    """An environment whose version table holds a revision."""

    environment: str
    state: str
    state_label: str
    url: str


@dataclass(frozen=True)
class Tag:
    """A short word on a row or panel: head, base, merge point, branch point, problem."""

    text: str
    css: str


@dataclass(frozen=True)
class GraphRow:
    """One revision's row on the graph, with its drawing."""

    revision: str
    short: str
    message: str
    create_date: str
    date: str
    anchor: str
    panel_url: str
    graph_url: str
    css: str
    tags: list[Tag]
    labels: list[Tag]
    badges: list[Badge]
    drawing: graphsvg.RowDrawing
    focus: bool


@dataclass(frozen=True)
class Window:
    """A run of rows from `start`, and where the rows before and after it are."""

    rows: list[GraphRow]
    start: int
    end: int
    count: int
    more_url: str | None
    newer_url: str | None

    @property
    def remaining(self) -> int:
        """Return how many rows follow this window."""
        return self.count - self.end


@dataclass(frozen=True)
class Search:
    """What a search found: several matches are listed, one is focused, none is said."""

    query: str
    matches: list[RevisionLink]
    total: int

    @property
    def cut(self) -> bool:
        """Return whether more revisions match than are listed."""
        return self.total > len(self.matches)


@dataclass(frozen=True)
class RevisionPanel:
    """Everything the side panel says about one revision."""

    project: str
    revision: str
    short: str
    message: str
    docstring: str
    path: str
    create_date: str
    tags: list[Tag]
    parents: list[RevisionLink]
    children: list[RevisionLink]
    depends_on: list[RevisionLink]
    dependents: list[RevisionLink]
    declared_labels: list[str]
    inherited_labels: list[str]
    problems: list[str]
    badges: list[Badge]
    graph_url: str
    panel_url: str


@dataclass(frozen=True)
class ProjectLink:
    """Another configured project, for switching between graphs."""

    name: str
    url: str
    current: bool


@dataclass(frozen=True)
class GraphPage:
    """The graph page of one project: its window of rows, problems, search and panel."""

    project: str
    description: str
    graph_url: str
    api_url: str
    projects: list[ProjectLink]
    notice: str
    count: int
    heads: list[RevisionLink]
    bases: list[RevisionLink]
    problems: list[str]
    missing_revision: str
    window: Window
    search: Search | None
    panel: RevisionPanel | None
    stray_badges: list[tuple[str, Badge]]


@dataclass
class _Drawn:
    """A loaded graph with its layout and lookups, kept as long as its graph is cached."""

    history: scripts.LoadedHistory
    layout: Layout
    order: list[str]
    index: dict[str, int]
    raw_problems: list[str]
    problems: list[str]
    flagged: set[str]


_drawn: dict[tuple[Path, tuple[Path, ...]], _Drawn] = {}
_drawn_lock = threading.Lock()


def graph_url(project: str, *, revision: str | None = None, start: int | None = None) -> str:
    """Return the graph page's address, focused on a revision or starting at a row."""
    path = reverse("graph", args=[project])
    query = {}
    if revision:
        query["rev"] = revision
    if start:
        query["start"] = str(start)
    return f"{path}?{urlencode(query)}" if query else path


def revision_url(project: str, revision: str) -> str:
    """Return the revision panel's address."""
    return reverse("revision", args=[project, revision])


def first_project_url() -> str | None:
    """Return the graph address of the first project by name, or None when there is none."""
    names = sorted(current_config().projects)
    return graph_url(names[0]) if names else None


def load_project_history(project: Project) -> scripts.LoadedHistory:
    """Return the project's history read statically: the web server never runs project code."""
    return scripts.load_history(project.script_location, alembic_ini=project.alembic_ini)


def _project(name: str) -> Project:
    """Return the configured project (raises GraphNotFound, ConfigError)."""
    found = current_config().projects.get(name)
    if found is None:
        raise GraphNotFound(f"There is no project named {name!r} in the config.")
    return found


def _drawn_project(name: str) -> _Drawn:
    """Return a project's drawn history (raises GraphNotFound, ConfigError, ScriptLocationError)."""
    return _drawn_for(load_project_history(_project(name)))


def _drawn_for(history: scripts.LoadedHistory) -> _Drawn:
    """Return the history's layout and lookups, computed once per loaded graph."""
    key = (history.script_location, history.version_locations)
    with _drawn_lock:
        drawn = _drawn.get(key)
    if drawn is not None and drawn.history is history:
        return drawn
    graph = history.graph
    order = graphsvg.newest_first(graph)
    # Alembic imports every file, so a syntax error inside upgrade() stops it as surely as
    # one in the header; load_history leaves the full check to the caller for speed.
    raw = list(graph.problems) + scripts.syntax_problems(history)
    by_path = {item.path: rev for rev, item in graph.revisions.items() if item.path}
    flagged = {rev for rev, item in graph.revisions.items() if item.problems}
    for problem in raw:
        flagged.update(t for t in _TOKEN.findall(problem) if t in graph.revisions)
        flagged.update(rev for path, rev in by_path.items() if problem.startswith(f"{path}:"))
    drawn = _Drawn(
        history=history,
        layout=layout(graph, order=order),
        order=order,
        index={rev: i for i, rev in enumerate(order)},
        raw_problems=raw,
        problems=[_relative_problem(p, history) for p in raw],
        flagged=flagged,
    )
    with _drawn_lock:
        # One entry per script directory: a changed directory replaces its old drawing.
        _drawn[key] = drawn
    return drawn


def _relative_problem(problem: str, history: scripts.LoadedHistory) -> str:
    """Shorten file paths in a problem to paths inside the script location."""
    prefix = str(history.script_location) + os.sep
    return problem.replace(prefix, "")


def _relative_path(path: str, history: scripts.LoadedHistory) -> str:
    if not path:
        return ""
    try:
        return os.path.relpath(path, history.script_location).replace(os.sep, "/")
    except ValueError:
        return path


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
    if rev in flagged:
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


def _window(
    project: str, drawn: _Drawn, start: int, badges: Mapping[str, list[Badge]], focus: str | None
) -> Window:
    graph = drawn.history.graph
    count = len(drawn.order)
    start = max(0, min(start, max(count - 1, 0)))
    rows = []
    for row in drawn.layout.rows(start, WINDOW):
        rev = row.revision
        item = graph.revisions[rev]
        marks = graphsvg.Marks(
            head=graph.is_head(rev),
            base=graph.is_base(rev),
            merge_point=graph.is_merge_point(rev),
            branch_point=graph.is_branch_point(rev),
            problem=rev in drawn.flagged,
            focus=rev == focus,
        )
        css = ["graph-row"]
        if marks.focus:
            css.append("is-focus")
        if marks.problem:
            css.append("has-problem")
        rows.append(
            GraphRow(
                revision=rev,
                short=rev[:SHORT_ID],
                message=item.message,
                create_date=item.create_date or "",
                date=(item.create_date or "")[:10],
                anchor=f"rev-{rev}",
                panel_url=revision_url(project, rev),
                graph_url=graph_url(project, revision=rev),
                css=" ".join(css),
                tags=_tags(graph, rev, drawn.flagged),
                labels=_row_labels(graph, rev),
                badges=badges.get(rev, []),
                drawing=graphsvg.row_drawing(row, marks),
                focus=marks.focus,
            )
        )
    end = start + len(rows)
    return Window(
        rows=rows,
        start=start,
        end=end,
        count=count,
        more_url=graph_url(project, start=end) if end < count else None,
        newer_url=graph_url(project, start=max(0, start - WINDOW)) if start > 0 else None,
    )


def _search(drawn: _Drawn, query: str) -> list[str]:
    """Return revisions whose id starts with, or whose message contains, the query."""
    needle = query.strip().lower()
    if not needle:
        return []
    graph = drawn.history.graph
    if needle in (rev.lower() for rev in graph.revisions):
        return [rev for rev in drawn.order if rev.lower() == needle]
    return [
        rev
        for rev in drawn.order
        if rev.lower().startswith(needle) or needle in graph.revisions[rev].message.lower()
    ]


def _focus(drawn: _Drawn, rev: str) -> str | None:
    """Return the revision a `?rev=` names: the full id, else a unique id prefix."""
    if rev in drawn.index:
        return rev
    needle = rev.lower()
    found = [r for r in drawn.order if r.lower().startswith(needle)] if len(needle) >= 4 else []
    return found[0] if len(found) == 1 else None


def _projects(current: str) -> list[ProjectLink]:
    names = sorted(current_config().projects)
    return [ProjectLink(name, graph_url(name), name == current) for name in names]


def graph_page(
    *, project: str, start: int | None = None, rev: str = "", query: str = ""
) -> GraphPage:
    """Return the graph page of a project, focused on `rev` or the single search match."""
    found = _project(project)
    drawn = _drawn_project(project)
    graph = drawn.history.graph
    badges = _badges(project)
    rev = rev.strip()
    focus = _focus(drawn, rev) if rev else None
    search = None
    if query.strip():
        matches = _search(drawn, query)
        if len(matches) == 1:
            focus = matches[0]
        search = Search(
            query=query.strip(),
            matches=[_link(project, graph, m) for m in matches[:SEARCH_LIMIT]],
            total=len(matches),
        )
    if start is None:
        start = drawn.index[focus] // WINDOW * WINDOW if focus else 0
    return GraphPage(
        project=project,
        description=found.description,
        graph_url=graph_url(project),
        api_url=reverse("api-graph", args=[project]),
        projects=_projects(project),
        notice=ALEMBIC_LOADER_NOTICE.format(name=project) if found.loader == "alembic" else "",
        count=len(graph),
        heads=[_link(project, graph, h) for h in graph.heads],
        bases=[_link(project, graph, b) for b in graph.bases],
        problems=drawn.problems,
        missing_revision=rev if rev and focus is None else "",
        window=_window(project, drawn, start, badges, focus),
        search=search,
        panel=_panel(project, drawn, focus, badges) if focus else None,
        stray_badges=[
            (head, badge)
            for head, items in badges.items()
            if head not in graph.revisions
            for badge in items
        ],
    )


def graph_window(*, project: str, start: int) -> Window:
    """Return one window of rows for "show more"."""
    return _window(project, _drawn_project(project), start, _badges(project), None)


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
