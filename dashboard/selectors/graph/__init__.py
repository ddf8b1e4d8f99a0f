"""The revision graph page, the revision panel and the graph API, read from a project's files."""

from dashboard.selectors.graph.links import SHORT_ID, first_project_url, graph_url, revision_url
from dashboard.selectors.graph.loaded import GraphNotFound, load_project_history
from dashboard.selectors.graph.page import (
    ALEMBIC_LOADER_NOTICE,
    AROUND_CONTEXT,
    SEARCH_LIMIT,
    graph_expanded,
    graph_page,
    graph_window,
)
from dashboard.selectors.graph.panel import graph_json, revision_panel
from dashboard.selectors.graph.records import (
    Badge,
    FleetGroup,
    FleetJump,
    Gap,
    GraphPage,
    GraphRow,
    Jump,
    ProjectLink,
    RevisionLink,
    RevisionPanel,
    Search,
    Tag,
    Window,
)
from dashboard.selectors.graph.window import COLLAPSE_AFTER, WINDOW

__all__ = [
    "ALEMBIC_LOADER_NOTICE",
    "AROUND_CONTEXT",
    "Badge",
    "COLLAPSE_AFTER",
    "FleetGroup",
    "FleetJump",
    "Gap",
    "GraphNotFound",
    "GraphPage",
    "GraphRow",
    "Jump",
    "ProjectLink",
    "RevisionLink",
    "RevisionPanel",
    "SEARCH_LIMIT",
    "SHORT_ID",
    "Search",
    "Tag",
    "WINDOW",
    "Window",
    "first_project_url",
    "graph_expanded",
    "graph_json",
    "graph_page",
    "graph_url",
    "graph_window",
    "load_project_history",
    "revision_panel",
    "revision_url",
]
