"""Draw a revision graph: its display order, and each layout row as SVG shapes with lane colours."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from html import escape

from dashboard.drawing.lanes import Row
from dashboard.history import Graph

LANE_WIDTH = 16
ROW_HEIGHT = 30
MARGIN = 10
# Lanes cycle through this many colours (CSS classes lane-0 ... lane-7).
LANE_COLOURS = 8
NODE_RADIUS = 5
MERGE_RADIUS = 7
HALO_RADIUS = 9
FOCUS_RADIUS = 12


@dataclass(frozen=True)
class Marks:
    """What a revision is, as far as its node's drawing is concerned."""

    head: bool = False
    base: bool = False
    merge_point: bool = False
    branch_point: bool = False
    problem: bool = False
    focus: bool = False


@dataclass(frozen=True)
class Shape:
    """One SVG path: its `d` attribute and its CSS classes."""

    d: str
    css: str


@dataclass(frozen=True)
class RowDrawing:
    """Everything one row's SVG holds, in pixels: edges below, the node's shapes on top."""

    width: int
    height: int
    x: float
    y: float
    edges: tuple[Shape, ...]
    node: tuple[Shape, ...]


def lane_x(lane: int) -> float:
    """Return the x of a lane's centre line."""
    return MARGIN + lane * LANE_WIDTH


def lane_class(lane: int) -> str:
    """Return the CSS class that colours a lane."""
    return f"lane-{lane % LANE_COLOURS}"


def row_width(lanes: int) -> int:
    """Return the pixel width of a row drawing `lanes` lanes."""
    return round(2 * MARGIN + (max(lanes, 1) - 1) * LANE_WIDTH)


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _edge(x1: float, y1: float, x2: float, y2: float) -> str:
    if x1 == x2:
        return f"M{_num(x1)} {_num(y1)}V{_num(y2)}"
    # A vertical-tangent curve, so bends meet straight lanes smoothly at both ends.
    middle = _num((y1 + y2) / 2)
    return f"M{_num(x1)} {_num(y1)}C{_num(x1)} {middle} {_num(x2)} {middle} {_num(x2)} {_num(y2)}"


def _circle(x: float, y: float, r: float) -> str:
    return (
        f"M{_num(x - r)} {_num(y)}a{_num(r)} {_num(r)} 0 1 0 {_num(2 * r)} 0"
        f"a{_num(r)} {_num(r)} 0 1 0 {_num(-2 * r)} 0Z"
    )


def _diamond(x: float, y: float, r: float) -> str:
    return (
        f"M{_num(x)} {_num(y - r)}L{_num(x + r)} {_num(y)}"
        f"L{_num(x)} {_num(y + r)}L{_num(x - r)} {_num(y)}Z"
    )


def newest_first(graph: Graph) -> list[str]:
    """Order revisions children before parents, newest create date first, like `git log --date-order`.

    Alembic's walk finishes one branch before the next, so on a long history its first rows
    can all be one old side branch. Ties keep Alembic's order, undated revisions wait until
    no dated one is ready, and revisions on a loop, which no order can place, come last.
    """
    walk = graph.topological()
    dates = {rev: graph.revisions[rev].create_date or "" for rev in walk}
    rank = {date: i for i, date in enumerate(sorted(set(dates.values())))}
    key = {rev: (-rank[dates[rev]] if dates[rev] else 1, i) for i, rev in enumerate(walk)}
    waiting = {rev: len(graph.children(rev)) for rev in walk}
    ready = [(key[rev], rev) for rev in walk if not waiting[rev]]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, rev = heapq.heappop(ready)
        order.append(rev)
        for parent in graph.parents(rev):
            waiting[parent] -= 1
            if not waiting[parent]:
                heapq.heappush(ready, (key[parent], parent))
    if len(order) < len(walk):
        placed = set(order)
        order += [rev for rev in walk if rev not in placed]
    return order


def row_drawing(row: Row, marks: Marks) -> RowDrawing:
    """Return the edges and node shapes of one layout row.

    A line entering from above keeps the colour of the lane it comes from, and a line
    leaving below takes the colour of the lane it goes to, so every lane reads as one
    colour from top to bottom.
    """
    height = ROW_HEIGHT
    segments = row.segments()
    # A lane passing the row untouched is one line, not a top half and a bottom half.
    passing = {x1 for x1, y1, x2, y2 in segments if x1 == x2 != row.lane and y1 == 0} & {
        x1 for x1, y1, x2, y2 in segments if x1 == x2 != row.lane and y2 == 1
    }
    edges = [
        Shape(_edge(lane_x(int(x)), 0, lane_x(int(x)), height), f"edge {lane_class(int(x))}")
        for x in sorted(passing)
    ]
    for x1, y1, x2, y2 in segments:
        if x1 == x2 and x1 in passing:
            continue
        colour_lane = int(x1) if y1 == 0 else int(x2)
        edges.append(
            Shape(
                _edge(lane_x(int(x1)), y1 * height, lane_x(int(x2)), y2 * height),
                f"edge {lane_class(colour_lane)}",
            )
        )
    x, y = lane_x(row.lane), height / 2
    colour = lane_class(row.lane)
    node: list[Shape] = []
    if marks.focus:
        node.append(Shape(_circle(x, y, FOCUS_RADIUS), "focus-ring"))
    if marks.head:
        node.append(Shape(_circle(x, y, HALO_RADIUS), f"halo {colour}"))
    if marks.base:
        node.append(Shape(f"M{_num(x - 7)} {_num(y + 10)}H{_num(x + 7)}", f"base-mark {colour}"))
    kind = ["node", colour]
    if marks.merge_point:
        kind.append("merge-point")
    if marks.branch_point:
        kind.append("branch-point")
    if marks.problem:
        kind.append("has-problem")
    shape = _diamond(x, y, MERGE_RADIUS) if marks.merge_point else _circle(x, y, NODE_RADIUS)
    node.append(Shape(shape, " ".join(kind)))
    return RowDrawing(
        width=row_width(row.width),
        height=height,
        x=x,
        y=y,
        edges=tuple(edges),
        node=tuple(node),
    )


def gap_drawing(lanes: tuple[int, ...]) -> RowDrawing:
    """Return the drawing of a collapsed run: each lane open through it passes straight down.

    Every row of a collapsible run has the same open lanes above and below, so the lanes
    meet the rows before and after the run exactly where those rows leave them.
    """
    height = ROW_HEIGHT
    edges = tuple(
        Shape(_edge(lane_x(lane), 0, lane_x(lane), height), f"edge gap-edge {lane_class(lane)}")
        for lane in lanes
    )
    return RowDrawing(
        width=row_width(max(lanes, default=0) + 1),
        height=height,
        x=lane_x(lanes[0] if lanes else 0),
        y=height / 2,
        edges=edges,
        node=(),
    )


def markup(drawing: RowDrawing, *, href: str = "", hx_get: str = "", push_url: str = "") -> str:
    """Return a row's `<svg>` element; with `href`, its node is a link (htmx attributes too).

    Written out here rather than by the template: a long graph page is mostly these paths.
    """
    size = f'width="{drawing.width}" height="{drawing.height}"'
    parts = [
        f'<svg class="lanes" {size} viewBox="0 0 {drawing.width} {drawing.height}"'
        ' aria-hidden="true" focusable="false">'
    ]
    parts += [f'<path d="{edge.d}" class="{edge.css}"/>' for edge in drawing.edges]
    node = "".join(f'<path d="{shape.d}" class="{shape.css}"/>' for shape in drawing.node)
    if href and node:
        attrs = f'href="{escape(href)}"'
        if hx_get:
            attrs += f' hx-get="{escape(hx_get)}" hx-target="#panel"'
        if push_url:
            attrs += f' hx-push-url="{escape(push_url)}"'
        node = f'<a {attrs} tabindex="-1">{node}</a>'
    parts.append(node)
    parts.append("</svg>")
    return "".join(parts)
