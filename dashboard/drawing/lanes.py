"""Lay a revision graph out in lanes, newest first, like `git log --graph`."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from dashboard.history import Graph

Segment = tuple[float, float, float, float]


@dataclass(frozen=True)
class Row:
    """One revision's row: its lane, and the lane lines that cross, end or start in it."""

    # Lanes are columns numbered from 0. A row is drawn in two halves: `above` lanes come in
    # at the top (those in `joins` bend into the revision, the rest pass straight down), and
    # `below` lanes leave at the bottom (those in `forks` bend out of the revision towards
    # its parents, the rest pass straight through).

    revision: str
    lane: int
    width: int
    above: tuple[int, ...]
    below: tuple[int, ...]
    joins: tuple[int, ...]
    forks: tuple[int, ...]

    @property
    def straight(self) -> bool:
        """Return whether no lane starts, ends or bends here: the row only continues its lane."""
        return (
            self.above == self.below and self.joins == (self.lane,) and self.forks == (self.lane,)
        )

    def segments(self) -> list[Segment]:
        """Return the row's lines as (x1, y1, x2, y2) in lane units, y from 0 (top) to 1."""
        lines: list[Segment] = []
        for lane in self.above:
            if lane in self.joins:
                lines.append((lane, 0.0, self.lane, 0.5))
            else:
                lines.append((lane, 0.0, lane, 0.5))
        for lane in self.below:
            if lane in self.forks:
                lines.append((self.lane, 0.5, lane, 1.0))
            else:
                lines.append((lane, 0.5, lane, 1.0))
        return lines


class Layout(Sequence[Row]):
    """Rows for a graph in display order, computed only as far as they are asked for."""

    # Each row costs time in proportion to the open lanes, and a window needs only the rows
    # above it, so the first page of a long history is cheap.

    def __init__(self, graph: Graph, order: Sequence[str]) -> None:
        self._graph = graph
        self._order = list(order)
        placed = set(self._order)
        self._parents = {
            rev: tuple(p for p in graph.parents(rev) if p in placed) for rev in self._order
        }
        self._rows: list[Row] = []
        self._lanes: list[str | None] = []
        self._expecting: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._order)

    @overload
    def __getitem__(self, index: int) -> Row: ...

    @overload
    def __getitem__(self, index: slice) -> list[Row]: ...

    def __getitem__(self, index: int | slice) -> Row | list[Row]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            self._extend(stop)
            return self._rows[start:stop:step]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        self._extend(index + 1)
        return self._rows[index]

    def __iter__(self) -> Iterator[Row]:
        for index in range(len(self)):
            yield self[index]

    def rows(self, start: int, count: int) -> list[Row]:
        """Return up to `count` rows from row `start`."""
        return self[start : start + count]

    def _extend(self, stop: int) -> None:
        with self._lock:
            while len(self._rows) < stop:
                self._rows.append(self._next_row(self._order[len(self._rows)]))

    def _free_lane(self, after: int = -1) -> int:
        lanes = self._lanes
        for index in range(after + 1, len(lanes)):
            if lanes[index] is None:
                return index
        lanes.append(None)
        return len(lanes) - 1

    def _expect(self, lane: int, rev: str) -> None:
        self._lanes[lane] = rev
        self._expecting.setdefault(rev, []).append(lane)

    def _next_row(self, rev: str) -> Row:
        lanes = self._lanes
        above = tuple(i for i, waiting in enumerate(lanes) if waiting is not None)
        joins = tuple(sorted(self._expecting.pop(rev, ())))
        lane = joins[0] if joins else self._free_lane()
        for index in joins:
            lanes[index] = None

        forks: list[int] = []
        parents = self._parents[rev]
        if parents:
            self._expect(lane, parents[0])
            forks.append(lane)
        for parent in parents[1:]:
            waiting = self._expecting.get(parent)
            if waiting:
                forks.append(waiting[0])
            else:
                new_lane = self._free_lane(lane)
                self._expect(new_lane, parent)
                forks.append(new_lane)
        while lanes and lanes[-1] is None:
            lanes.pop()
        below = tuple(i for i, waiting in enumerate(lanes) if waiting is not None)
        width = max((lane, *above, *below)) + 1
        return Row(rev, lane, width, above, below, joins, tuple(sorted(set(forks))))


def layout(graph: Graph, *, order: Sequence[str] | None = None) -> Layout:
    """Return the lane layout of `graph`, newest first (Alembic's walk order by default)."""
    return Layout(graph, graph.topological() if order is None else order)


def graph_as_text(graph: Graph, *, order: Sequence[str] | None = None) -> str:
    """Return a `git log --graph`-like text drawing of the history, newest first."""
    lines: list[str] = []
    for row in layout(graph, order=order):
        far_joins = [j for j in row.joins if j != row.lane]
        if far_joins:
            passing = [lane for lane in row.above if lane not in row.joins]
            lines.append(_connector(passing, row.lane, far_joins, "/").rstrip())
        cells = [" "] * (2 * row.width)
        for lane in row.above:
            if lane in row.below and lane not in row.joins:
                cells[2 * lane] = "|"
        cells[2 * row.lane] = "*"
        lines.append(f"{''.join(cells).rstrip()}  {_describe(graph, row.revision)}")
        far_forks = [k for k in row.forks if k != row.lane]
        if far_forks:
            passing = [lane for lane in row.below if lane in row.above and lane != row.lane]
            lines.append(_connector(passing, row.lane, far_forks, "\\").rstrip())
    return "\n".join(lines) + ("\n" if lines else "")


def _connector(straight: Sequence[int], lane: int, bent: Sequence[int], slash: str) -> str:
    """Draw one line of lane bends between `lane` and each of `bent`, keeping other lanes."""
    width = max((lane, *straight, *bent)) + 1
    cells = [" "] * (2 * width)
    for other in straight:
        cells[2 * other] = "|"
    cells[2 * lane] = "|"
    for target in bent:
        low, high = sorted((lane, target))
        for position in range(2 * low + 1, 2 * high - 1):
            if cells[position] == " ":
                cells[position] = "_"
        if target > lane:
            cells[2 * target - 1] = slash
        else:
            cells[2 * target + 1] = "/" if slash == "\\" else "\\"
    return "".join(cells)


def _describe(graph: Graph, rev: str) -> str:
    revision = graph.revisions[rev]
    marks = []
    labels = graph.labels_of(rev)
    if labels:
        marks.append("(" + ", ".join(labels) + ")")
    if graph.is_head(rev):
        marks.append("(head)")
    if graph.is_merge_point(rev):
        marks.append("(mergepoint)")
    if graph.is_branch_point(rev):
        marks.append("(branchpoint)")
    text = " ".join([rev, *marks])
    return f"{text} {revision.message}" if revision.message else text
