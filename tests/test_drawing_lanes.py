"""Lane layout of revision graphs: every drawn line leads from a revision to its parent."""

from __future__ import annotations

import pytest

from dashboard.drawing.lanes import Row, graph_as_text, layout
from dashboard.history import Graph, Revision
from tests.genhistory import random_history


def generated(count: int, seed: int) -> Graph:
    return Graph(
        Revision(s.revision, s.down_revisions, s.depends_on, s.branch_labels, s.message)
        for s in random_history(count, seed=seed)
    )


DIAMOND = Graph(
    [
        Revision("a", (), message="base"),
        Revision("b1", ("a",), message="left"),
        Revision("b2", ("a",), message="right"),
        Revision("c", ("b1", "b2"), message="merge"),
        Revision("d", ("c",), message="top"),
    ]
)


def drawn_parents(rows: list[Row], index: int) -> set[str]:
    """Follow each lane leaving row `index` down to the row it ends in."""
    found = set()
    for lane in rows[index].forks:
        for below in range(index + 1, len(rows)):
            assert lane in rows[below].above, (rows[index].revision, lane)
            if lane in rows[below].joins:
                found.add(rows[below].revision)
                break
            assert lane in rows[below].below, (rows[index].revision, lane)
        else:
            pytest.fail(f"lane {lane} from {rows[index].revision} never ends")
    return found


def assert_faithful(graph: Graph, rows: list[Row]) -> None:
    assert [row.revision for row in rows] == graph.topological()
    for index, row in enumerate(rows):
        assert set(row.joins) <= set(row.above)
        assert row.lane in row.joins or row.lane not in row.above
        for lane in set(row.above) - set(row.joins):
            assert lane in row.below, "a lane passing through must continue"
        assert max((row.lane, *row.above, *row.below)) < row.width
        if index + 1 < len(rows):
            assert row.below == rows[index + 1].above
        assert drawn_parents(rows, index) == set(graph.parents(row.revision))
    assert rows[0].above == () and rows[-1].below == ()


def test_diamond_layout_draws_the_branch_and_the_merge() -> None:
    rows = list(layout(DIAMOND))
    assert_faithful(DIAMOND, rows)
    merge = rows[1]
    assert merge.revision == "c"
    assert merge.forks == (0, 1)
    assert merge.segments() == [(0, 0.0, 0, 0.5), (0, 0.5, 0, 1.0), (0, 0.5, 1, 1.0)]
    base = rows[-1]
    assert base.joins == (0, 1)
    assert (1, 0.0, 0, 0.5) in base.segments()


def test_diamond_as_text() -> None:
    assert graph_as_text(DIAMOND) == (
        "*  d (head) top\n"
        "*  c (mergepoint) merge\n"
        "|\\\n"
        "* |  b1 left\n"
        "| *  b2 right\n"
        "|/\n"
        "*  a (branchpoint) base\n"
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generated_histories_lay_out_faithfully(seed: int) -> None:
    graph = generated(600, seed)
    assert_faithful(graph, list(layout(graph)))


def test_windows_match_the_full_layout_in_any_order() -> None:
    graph = generated(400, 7)
    full = list(layout(graph))
    windowed = layout(graph)
    assert windowed.rows(300, 50) == full[300:350]
    assert windowed.rows(0, 10) == full[:10]
    assert windowed.rows(390, 50) == full[390:]
    assert windowed[-1] == full[-1]
    assert len(windowed) == len(full) == 400


def test_linear_history_uses_one_lane() -> None:
    graph = Graph([Revision(f"r{i}", (f"r{i - 1}",) if i else ()) for i in range(50)])
    assert {row.width for row in layout(graph)} == {1}


def test_custom_order_and_missing_parents_leave_no_dangling_lanes() -> None:
    graph = Graph([Revision("a", ()), Revision("b", ("a",)), Revision("c", ("gone",))])
    rows = list(layout(graph, order=["c", "b", "a"]))
    assert rows[0].forks == () and rows[-1].below == ()
    assert "c" in graph_as_text(graph)


def test_text_lists_every_revision_once() -> None:
    graph = generated(300, 3)
    text = graph_as_text(graph)
    for revision in graph.revisions:
        assert text.count(f" {revision} ") + text.count(f" {revision}\n") == 1
