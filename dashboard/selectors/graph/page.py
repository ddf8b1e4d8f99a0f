"""Read the graph page of a project: its window of rows, search, focus and problems."""

from __future__ import annotations

from django.urls import reverse

from dashboard.selectors.graph.jumps import header
from dashboard.selectors.graph.links import _badges, _link, _projects, graph_url
from dashboard.selectors.graph.loaded import _Drawn, _drawn_project, _project
from dashboard.selectors.graph.panel import _panel
from dashboard.selectors.graph.records import GraphPage, Search, Window
from dashboard.selectors.graph.window import WINDOW, build_window, expanded_rows

SEARCH_LIMIT = 50
# Rows shown above the revision a header link opens the graph around.
AROUND_CONTEXT = 8

ALEMBIC_LOADER_NOTICE = (
    "This project is configured for Alembic's own loader, which runs the project's code;"
    " the web server never does, so this page shows what the files say when read without"
    " running them. `manage.py revisions --project {name}` shows Alembic's reading."
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


def graph_page(
    *,
    project: str,
    start: int | None = None,
    rev: str = "",
    query: str = "",
    around: str = "",
    open_rows: int = 0,
) -> GraphPage:
    """Return the graph page of a project, focused on `rev` or the single search match.

    `around` focuses a revision too, with a few rows above it, as the header's links do.
    """
    found = _project(project)
    drawn = _drawn_project(project)
    graph = drawn.history.graph
    badges = _badges(project)
    heading = header(project, graph)
    rev = (around or rev).strip()
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
    if start is None and focus and around:
        start = max(0, drawn.index[focus] - AROUND_CONTEXT)
    if start is None:
        start = drawn.index[focus] // WINDOW * WINDOW if focus else 0
    keep = heading.revisions | badges.keys() | ({focus} if focus else set())
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
        window=build_window(project, drawn, start, badges, focus, keep, open_rows=open_rows),
        search=search,
        panel=_panel(project, drawn, focus, badges) if focus else None,
        stray_badges=[
            (head, badge)
            for head, items in badges.items()
            if head not in graph.revisions
            for badge in items
        ],
        environments=heading.environments,
        fleets=heading.fleets,
        history=drawn.history,
    )


def graph_window(*, project: str, start: int) -> Window:
    """Return one window of rows for "show more"."""
    drawn = _drawn_project(project)
    badges = _badges(project)
    keep = header(project, drawn.history.graph).revisions | badges.keys()
    return build_window(project, drawn, start, badges, None, keep)


def graph_expanded(*, project: str, start: int, count: int) -> Window:
    """Return the rows of a collapsed run, for the row that stood for them."""
    return expanded_rows(project, _drawn_project(project), start, count, _badges(project))
