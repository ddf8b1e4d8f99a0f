"""Read the graph page of a project: its window of rows, search, focus and problems."""

from __future__ import annotations

from collections.abc import Mapping

from django.urls import reverse

from dashboard.drawing import svg
from dashboard.selectors.graph.links import (
    SHORT_ID,
    _badges,
    _link,
    _projects,
    _row_labels,
    _tags,
    graph_url,
    revision_url,
)
from dashboard.selectors.graph.loaded import _Drawn, _drawn_project, _project
from dashboard.selectors.graph.panel import _panel
from dashboard.selectors.graph.records import Badge, GraphPage, GraphRow, Search, Window

WINDOW = 200
SEARCH_LIMIT = 50

ALEMBIC_LOADER_NOTICE = (
    "This project is configured for Alembic's own loader, which runs the project's code;"
    " the web server never does, so this page shows what the files say when read without"
    " running them. `manage.py revisions --project {name}` shows Alembic's reading."
)


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
        marks = svg.Marks(
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
                drawing=svg.row_drawing(row, marks),
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
