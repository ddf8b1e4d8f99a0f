"""The graph's display order and each row's SVG geometry, on hand-made and generated histories."""

import re

import pytest

from dashboard.drawing.lanes import Row, layout
from dashboard.drawing.svg import (
    LANE_COLOURS,
    ROW_HEIGHT,
    Marks,
    RowDrawing,
    lane_class,
    lane_x,
    newest_first,
    row_drawing,
    row_width,
)
from dashboard.history import Graph, Revision
from tests.genhistory import random_history


def rev(name: str, *down: str, date: str | None = None) -> Revision:
    return Revision(name, tuple(down), message=f"make {name}", create_date=date)


def generated(count: int, seed: int) -> Graph:
    """Return a generated history as a graph, without writing files."""
    return Graph(
        Revision(
            s.revision,
            s.down_revisions,
            depends_on=s.depends_on,
            branch_labels=s.branch_labels,
            message=s.message,
            create_date=str(s.create_date),
        )
        for s in random_history(count, seed=seed)
    )


def ends(drawing: RowDrawing) -> set[tuple[float, float]]:
    """Return every (x, y) where an edge starts or ends."""
    points = set()
    for edge in drawing.edges:
        numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", edge.d)]
        start = (numbers[0], numbers[1])
        end = (numbers[0], numbers[2]) if "V" in edge.d else (numbers[-2], numbers[-1])
        points.update({start, end})
    return points


def test_a_straight_row_is_two_vertical_lines_and_a_round_node() -> None:
    drawing = row_drawing(Row("b", 0, 1, (0,), (0,), (0,), (0,)), Marks())
    x = lane_x(0)
    assert [e.d for e in drawing.edges] == [f"M{x:g} 0V15", f"M{x:g} 15V30"]
    assert all(e.css == "edge lane-0" for e in drawing.edges)
    assert (drawing.x, drawing.y, drawing.height) == (x, ROW_HEIGHT / 2, ROW_HEIGHT)
    [node] = drawing.node
    assert node.css == "node lane-0"
    assert node.d.startswith(f"M{x - 5:g} 15a5 5") and node.d.endswith("Z")


def test_bends_keep_the_colour_of_the_lane_they_leave_or_join() -> None:
    # A merge in lane 0 whose second parent waits in lane 2 while lane 1 passes by.
    merge = Row("m", 0, 3, (0, 1), (0, 1, 2), (0,), (0, 2))
    drawing = row_drawing(merge, Marks(merge_point=True))
    css = sorted(e.css for e in drawing.edges)
    assert css == ["edge lane-0", "edge lane-0", "edge lane-1", "edge lane-2"]
    assert f"M{lane_x(1):g} 0V30" in [e.d for e in drawing.edges]  # lane 1 passes in one line
    bend = next(e for e in drawing.edges if e.css == "edge lane-2")
    assert bend.d.startswith(f"M{lane_x(0):g} 15C") and bend.d.endswith(f"{lane_x(2):g} 30")
    # A join from lane 1 into a revision in lane 0 takes lane 1's colour.
    join = row_drawing(Row("j", 0, 2, (0, 1), (0,), (0, 1), (0,)), Marks())
    bend = next(e for e in join.edges if "C" in e.d)
    assert bend.css == "edge lane-1"
    assert drawing.width == row_width(3) > join.width == row_width(2) > row_width(1)


def test_node_shapes_tell_kinds_apart() -> None:
    row = Row("r", 1, 2, (1,), (1,), (1,), (1,))
    plain = row_drawing(row, Marks()).node
    merge = row_drawing(row, Marks(merge_point=True)).node
    fork = row_drawing(row, Marks(branch_point=True)).node
    both = row_drawing(row, Marks(merge_point=True, branch_point=True)).node
    assert plain[-1].d != merge[-1].d and "L" in merge[-1].d and "L" not in plain[-1].d
    assert fork[-1].css == "node lane-1 branch-point" and fork[-1].d == plain[-1].d
    assert both[-1].css == "node lane-1 merge-point branch-point"
    marked = row_drawing(row, Marks(head=True, base=True, problem=True, focus=True)).node
    assert [shape.css.split()[0] for shape in marked] == ["focus-ring", "halo", "base-mark", "node"]
    assert "has-problem" in marked[-1].css
    assert len(plain) == 1


def test_lane_colours_cycle() -> None:
    assert lane_class(0) == lane_class(LANE_COLOURS) == "lane-0"
    assert len({lane_class(i) for i in range(3 * LANE_COLOURS)}) == LANE_COLOURS


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lines_meet_at_every_row_boundary(seed: int) -> None:
    graph = generated(600, seed)
    rows = list(layout(graph, order=newest_first(graph)))
    drawings = [row_drawing(row, Marks()) for row in rows]
    for row, drawing in zip(rows, drawings, strict=True):
        points = ends(drawing)
        for lane in row.above:
            assert (lane_x(lane), 0.0) in points
        for lane in row.below:
            assert (lane_x(lane), float(ROW_HEIGHT)) in points
        # Every line touches the row's edge or its node, nowhere else.
        node = (drawing.x, drawing.y)
        assert all(y in (0.0, ROW_HEIGHT) or (x, y) == node for x, y in points)
    for upper, lower in zip(rows, rows[1:], strict=False):
        assert upper.below == lower.above


def test_newest_first_interleaves_branches_by_date() -> None:
    graph = Graph(
        [
            rev("base", date="2024-01-01"),
            rev("a1", "base", date="2024-01-02"),
            rev("b1", "base", date="2024-01-03"),
            rev("a2", "a1", date="2024-01-04"),
            rev("b2", "b1", date="2024-01-05"),
        ]
    )
    assert newest_first(graph) == ["b2", "a2", "b1", "a1", "base"]
    assert graph.topological() != newest_first(graph)


def test_newest_first_keeps_alembics_order_without_dates_and_places_loops() -> None:
    undated = generated(300, 4)
    undated = Graph(
        [
            Revision(r.revision, r.down_revisions, r.depends_on, r.branch_labels)
            for r in undated.revisions.values()
        ]
    )
    assert newest_first(undated) == undated.topological()
    looped = Graph([rev("a"), rev("b", "d"), rev("c", "b"), rev("d", "c"), rev("e", "a")])
    assert sorted(newest_first(looped)) == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("seed", [5, 6])
def test_newest_first_puts_children_before_parents(seed: int) -> None:
    graph = generated(1_000, seed)
    order = newest_first(graph)
    assert sorted(order) == sorted(graph.revisions)
    position = {r: i for i, r in enumerate(order)}
    for child in graph.revisions:
        for parent in graph.parents(child):
            assert position[child] < position[parent]
    heads_first = [r for r in order[:50] if graph.is_head(r)]
    assert heads_first  # the newest rows start at a head
