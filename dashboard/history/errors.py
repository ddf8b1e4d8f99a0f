"""Name what a revision history question can fail on, under one base exception."""

from __future__ import annotations


class HistoryError(Exception):
    """A revision history question that cannot be answered as asked."""


class UnknownRevision(HistoryError):
    """A revision, prefix or branch label names nothing in the history."""


class AmbiguousRevision(HistoryError):
    """A revision prefix matches several revisions."""


class NotOnBranch(HistoryError):
    """A revision was asked for on a branch it does not belong to."""


class MultipleHeads(HistoryError):
    """A single head was asked for where the history has several."""


class CycleDetected(HistoryError):
    """The history's parent or dependency links form a loop."""


class BrokenHistory(HistoryError):
    """The history has problems that stop Alembic from loading it, so nothing can be planned."""


class RangeNotAncestor(HistoryError):
    """The target is not reachable from the current heads in the asked direction."""


class AmbiguousDowngrade(HistoryError):
    """Alembic would have to guess which branch to downgrade; name one explicitly."""


class AmbiguousUpgrade(HistoryError):
    """Alembic would have to guess which branch to upgrade; name one explicitly."""


class OverlappingHeads(HistoryError):
    """The current heads or targets include a revision and one of its ancestors."""


class UnplannableStep(HistoryError):
    """Alembic could not plan or record a step from these heads."""
