"""Cut the graph into windows of rows, collapsing long runs where nothing happens."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from django.utils.safestring import mark_safe

from dashboard.drawing import svg
from dashboard.drawing.lanes import Row
from dashboard.selectors.graph.links import SHORT_ID, _row_labels, _tags, graph_url, revision_url
from dashboard.selectors.graph.loaded import _Drawn
from dashboard.selectors.graph.records import Badge, Gap, GraphRow, Window

# Rows (a collapsed run counts as one) a window shows.
WINDOW = 200
# A run of more rows than this collapses to its first row, one expandable row and its last.
COLLAPSE_AFTER = 6


def collapsible(drawn: _Drawn, row: Row, keep: Collection[str]) -> bool:
    """Return whether a row may hide in a collapsed run.

    Only a row that continues its own lane while every other lane passes straight by may
    hide, so the collapsed row draws the same lanes the rows above and below it leave; and
    never a head, base, branch or merge point, labelled or flagged revision, or one that an
    environment or fleet member is at (`keep`).
    """
    rev = row.revision
    if not row.straight or rev in keep or rev in drawn.flagged:
        return False
    graph = drawn.history.graph
    return not (
        graph.is_branch_point(rev)
        or graph.is_merge_point(rev)
        or graph.revisions[rev].branch_labels
    )


def _spans(
    drawn: _Drawn, start: int, keep: Collection[str], limit: int, open_rows: int
) -> tuple[list[tuple[int, int]], int]:
    """Return (first, stop) layout spans from `start`, one per shown row or collapsed run.

    A span of one row is a row; a longer one is a collapsed run. The first `open_rows`
    rows are shown one by one (an expanded run). Returns the spans and where they stop.
    """
    rows = drawn.layout
    count = len(rows)
    spans: list[tuple[int, int]] = []
    index = start
    opened = start + open_rows
    while index < count and len(spans) < limit:
        if index < opened or not collapsible(drawn, rows[index], keep):
            spans.append((index, index + 1))
            index += 1
            continue
        stop = index + 1
        while stop < count and collapsible(drawn, rows[stop], keep):
            stop += 1
        if stop - index > COLLAPSE_AFTER:
            spans += [(index, index + 1), (index + 1, stop - 1), (stop - 1, stop)]
        else:
            spans += [(i, i + 1) for i in range(index, stop)]
        index = stop
    return spans, index


def _newer_start(drawn: _Drawn, start: int, keep: Collection[str], limit: int) -> int:
    """Return where the window before `start` begins: `limit` rows back, runs counted as one."""
    rows = drawn.layout
    shown = 0
    index = start
    while index > 0 and shown < limit:
        if not collapsible(drawn, rows[index - 1], keep):
            index -= 1
            shown += 1
            continue
        first = index - 1
        while first > 0 and collapsible(drawn, rows[first - 1], keep):
            first -= 1
        shown += 3 if index - first > COLLAPSE_AFTER else index - first
        index = first
    return index


def _row(
    project: str, drawn: _Drawn, row: Row, badges: Mapping[str, list[Badge]], focus: str | None
) -> GraphRow:
    rev = row.revision
    key = (project, rev, rev == focus, tuple(badges.get(rev, ())))
    found = drawn.shown.get(key)
    if isinstance(found, GraphRow):
        return found
    if len(drawn.shown) > 4 * len(drawn.order) + 1000:
        drawn.shown.clear()  # badges moved on many times: start again
    made = drawn.shown[key] = _new_row(project, drawn, row, badges, focus)
    return made


def _new_row(
    project: str, drawn: _Drawn, row: Row, badges: Mapping[str, list[Badge]], focus: str | None
) -> GraphRow:
    graph = drawn.history.graph
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
    if item.unreadable:
        css.append("is-unreadable")  # a placeholder for a file that does not parse
    panel_url = revision_url(project, rev)
    focus_url = graph_url(project, revision=rev)
    drawing = svg.row_drawing(row, marks)
    return GraphRow(
        revision=rev,
        short=rev[:SHORT_ID],
        message=item.message,
        create_date=item.create_date or "",
        date=(item.create_date or "")[:10],
        anchor=f"rev-{rev}",
        panel_url=panel_url,
        graph_url=focus_url,
        css=" ".join(css),
        tags=_tags(graph, rev, drawn.flagged),
        labels=_row_labels(graph, rev),
        badges=badges.get(rev, []),
        drawing=drawing,
        focus=marks.focus,
        svg=mark_safe(  # noqa: S308 - markup() escapes the URLs; the rest are numbers and classes
            svg.markup(drawing, href=panel_url, hx_get=panel_url, push_url=focus_url)
        ),
    )


def _gap(project: str, drawn: _Drawn, first: int, stop: int) -> Gap:
    rows = drawn.layout
    top = rows[first]
    drawing = svg.gap_drawing(top.above)
    return Gap(
        start=first,
        count=stop - first,
        first=top.revision,
        last=rows[stop - 1].revision,
        anchor=f"gap-{top.revision}",
        expand_url=graph_url(project, start=first, open_rows=stop - first),
        drawing=drawing,
        svg=mark_safe(svg.markup(drawing)),  # noqa: S308 - numbers and class names only
    )


def build_window(
    project: str,
    drawn: _Drawn,
    start: int,
    badges: Mapping[str, list[Badge]],
    focus: str | None,
    keep: Collection[str],
    *,
    open_rows: int = 0,
) -> Window:
    """Return the window of rows from layout row `start`, long quiet runs collapsed."""
    count = len(drawn.order)
    start = max(0, min(start, max(count - 1, 0)))
    spans, end = _spans(drawn, start, keep, WINDOW, open_rows)
    shown: list[GraphRow | Gap] = [
        _row(project, drawn, drawn.layout[first], badges, focus)
        if stop - first == 1
        else _gap(project, drawn, first, stop)
        for first, stop in spans
    ]
    return Window(
        rows=shown,
        start=start,
        end=end,
        count=count,
        more_url=graph_url(project, start=end) if end < count else None,
        newer_url=graph_url(project, start=_newer_start(drawn, start, keep, WINDOW))
        if start > 0
        else None,
    )


def expanded_rows(
    project: str, drawn: _Drawn, start: int, count: int, badges: Mapping[str, list[Badge]]
) -> Window:
    """Return a collapsed run's rows, a window's worth at a time; the rest stays collapsed."""
    total = len(drawn.order)
    start = max(0, min(start, total))
    stop = min(start + max(count, 0), total)
    shown_stop = min(stop, start + WINDOW)
    shown: list[GraphRow | Gap] = [
        _row(project, drawn, row, badges, None)
        for row in drawn.layout.rows(start, shown_stop - start)
    ]
    if shown_stop < stop:
        shown.append(_gap(project, drawn, shown_stop, stop))
    return Window(rows=shown, start=start, end=stop, count=total, more_url=None, newer_url=None)
