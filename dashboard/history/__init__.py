"""Hold an Alembic revision graph in memory: heads, bases, ancestry, resolution and plans."""

from dashboard.history.errors import (
    AmbiguousDowngrade,
    AmbiguousRevision,
    AmbiguousUpgrade,
    BrokenHistory,
    CycleDetected,
    HistoryError,
    MultipleHeads,
    NotOnBranch,
    OverlappingHeads,
    RangeNotAncestor,
    UnknownRevision,
    UnplannableStep,
)
from dashboard.history.graph import Graph
from dashboard.history.order import walk_order
from dashboard.history.records import Direction, Revision, Step
from dashboard.history.structure import ILLEGAL_ID_CHARS

__all__ = [
    "AmbiguousDowngrade",
    "AmbiguousRevision",
    "AmbiguousUpgrade",
    "BrokenHistory",
    "CycleDetected",
    "Direction",
    "Graph",
    "HistoryError",
    "ILLEGAL_ID_CHARS",
    "MultipleHeads",
    "NotOnBranch",
    "OverlappingHeads",
    "RangeNotAncestor",
    "Revision",
    "Step",
    "UnknownRevision",
    "UnplannableStep",
    "walk_order",
]
