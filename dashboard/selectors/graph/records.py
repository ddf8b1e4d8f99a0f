"""Hold the frozen records the graph page, its row windows and the revision panel show."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dashboard.drawing import svg
from dashboard.scripts import LoadedHistory


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
    drawing: svg.RowDrawing
    focus: bool
    svg: str = ""  # the drawing as markup, safe to show
    is_gap: ClassVar[bool] = False


@dataclass(frozen=True)
class Gap:
    """A collapsed run of rows that carry no environment, label, branch or merge point."""

    start: int  # the layout index of the first hidden row
    count: int
    first: str
    last: str
    anchor: str
    expand_url: str  # the hidden rows: a fragment for htmx, a page of its own without it
    drawing: svg.RowDrawing
    svg: str = ""  # the drawing as markup, safe to show
    is_gap: ClassVar[bool] = True

    @property
    def first_short(self) -> str:
        """Return the first hidden revision's short id."""
        return self.first[:12]

    @property
    def last_short(self) -> str:
        """Return the last hidden revision's short id."""
        return self.last[:12]


@dataclass(frozen=True)
class Window:
    """A run of rows from `start`, and where the rows before and after it are."""

    rows: list[GraphRow | Gap]
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
class Jump:
    """An environment in the graph's header: its heads, each a link to the rows around it."""

    environment: str
    state: str
    state_label: str
    url: str  # the environment's page
    heads: list[RevisionLink]  # graph_url opens the window around the head
    note: str  # why there is no link: never read, or a head this history lacks


@dataclass(frozen=True)
class FleetGroup:
    """Members of a fleet at the same heads, linked to the rows around the first head."""

    count: int
    short: str
    revision: str
    graph_url: str
    fleet_url: str


@dataclass(frozen=True)
class FleetJump:
    """A fleet in the graph's header: its members counted by the heads they are at."""

    name: str
    url: str
    total: int
    groups: list[FleetGroup]
    more: int  # groups not shown
    unread: int  # members never read, or whose heads this history lacks


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
    environments: list[Jump]
    fleets: list[FleetJump]
    history: LoadedHistory  # what the page was drawn from, for other regions of the page
