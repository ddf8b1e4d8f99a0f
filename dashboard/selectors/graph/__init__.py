"""The revision graph page, the revision panel and the graph API, read from a project's files."""

from dashboard.selectors.graph.links import SHORT_ID, first_project_url, graph_url, revision_url
from dashboard.selectors.graph.loaded import GraphNotFound, load_project_history
from dashboard.selectors.graph.page import (
    ALEMBIC_LOADER_NOTICE,
    SEARCH_LIMIT,
    WINDOW,
    graph_page,
    graph_window,
)
from dashboard.selectors.graph.panel import graph_json, revision_panel
from dashboard.selectors.graph.records import (
    Badge,
    GraphPage,
    GraphRow,
    ProjectLink,
    RevisionLink,
    RevisionPanel,
    Search,
    Tag,
    Window,
)

__all__ = [
    "ALEMBIC_LOADER_NOTICE",
    "Badge",
    "GraphNotFound",
    "GraphPage",
    "GraphRow",
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
    "graph_json",
    "graph_page",
    "graph_url",
    "graph_window",
    "load_project_history",
    "revision_panel",
    "revision_url",
]
