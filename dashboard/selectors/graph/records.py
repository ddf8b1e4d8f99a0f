"""Hold the frozen records the graph page, its row windows and the revision panel show."""

from __future__ import annotations

from dataclasses import dataclass

from dashboard.drawing import svg


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
