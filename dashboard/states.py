"""Decide an environment's state from what its version table said and the revision graph."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from dashboard.databases.versions import Reading
from dashboard.history import Graph, HistoryError


class State(StrEnum):
    """Where an environment stands; Snapshot.State stores the same values."""

    CURRENT = "current"  # the heads equal the script directory's heads: nothing to run
    BEHIND = "behind"  # every head known, revisions pending
    UNINITIALIZED = "uninitialized"  # no version table, or an empty one
    UNKNOWN = "unknown"  # a head that the script directory does not have
    UNREACHABLE = "unreachable"  # could not connect, log in or read in time
    NOT_CONFIGURED = "not_configured"  # the environment's URL variable is unset
    INVALID = "invalid"  # the history cannot plan from these heads, or cannot be read


SHOWN_MISSING = 5
SHOWN_LENGTH = 64
_PLAIN_ID = re.compile(r"[0-9A-Za-z_.@-]+")

# States in which the version table was read, so its heads mean something.
READ_STATES = frozenset(
    {State.CURRENT, State.BEHIND, State.UNINITIALIZED, State.UNKNOWN, State.INVALID}
)


@dataclass(frozen=True)
class Status:
    """An environment's state, the revisions `upgrade heads` would run, and why."""

    state: State
    pending: tuple[str, ...]
    detail: str
    error: str | None = None


def environment_status(
    reading: Reading,
    graph: Graph | None,
    *,
    history_error: str | None = None,
    version_table: str = "alembic_version",
) -> Status:
    """Return the state of an environment from its reading and its project's graph."""
    if reading.error_kind == "not_configured":
        return Status(State.NOT_CONFIGURED, (), reading.error or "not configured", reading.error)
    if reading.error is not None:
        return Status(State.UNREACHABLE, (), reading.error, reading.error)
    heads = reading.heads
    if not heads:
        return _uninitialized(reading, graph, version_table)
    if graph is None:
        problem = f"the script directory cannot be read: {history_error or 'no history'}"
        return Status(State.INVALID, (), problem, problem)
    missing = [head for head in heads if head not in graph.revisions]
    if missing:
        detail = _not_in_scripts(missing)
        if graph.problems:
            # A revision file that cannot be read is the likeliest reason a head is missing.
            shown = "; ".join(graph.problems[:3])
            more = len(graph.problems) - 3
            detail += f" (which has problems: {shown}{f'; and {more} more' if more > 0 else ''})"
        return Status(State.UNKNOWN, (), detail)
    repeated = sorted(head for head, times in Counter(heads).items() if times > 1)
    if repeated:
        # Alembic updates a version row by its value and refuses when two rows match.
        problem = (
            f"version table {version_table} lists {', '.join(map(_shown, repeated))} more than"
            " once: Alembic cannot upgrade or downgrade from it"
        )
        return Status(State.INVALID, (), problem, problem)
    try:
        pending = tuple(graph.pending(list(heads)))
    except HistoryError as exc:
        problem = f"cannot plan an upgrade from {_ids(heads)}: {exc}"
        return Status(State.INVALID, (), problem, problem)
    if not pending:
        return Status(State.CURRENT, (), f"at {_heads_phrase(graph.heads)}")
    return Status(State.BEHIND, pending, f"{len(pending)} behind {_heads_phrase(graph.heads)}")


def _uninitialized(reading: Reading, graph: Graph | None, version_table: str) -> Status:
    why = (
        f"version table {version_table} is empty"
        if reading.table_exists
        else f"no version table {version_table}"
    )
    pending: tuple[str, ...] = ()
    if graph is not None:
        try:
            pending = tuple(graph.pending([]))
        except HistoryError:
            # An empty database has nothing to overlap; a history that cannot plan from
            # base shows its problem on the graph page, the state stays what the table says.
            pending = ()
    return Status(State.UNINITIALIZED, pending, why)


def _not_in_scripts(missing: Sequence[str]) -> str:
    if len(missing) == 1:
        return f"head {_shown(missing[0])} is not in the script directory"
    # A version table full of junk must not turn the overview into a wall of ids.
    shown = ", ".join(_shown(rev) for rev in missing[:SHOWN_MISSING])
    more = len(missing) - SHOWN_MISSING
    if more > 0:
        shown += f" and {more} more"
    return f"heads {shown} are not in the script directory"


def _shown(revision: str) -> str:
    """Return a head for a sentence: quoted when it is blank, odd or invisible, cut when long."""
    cut = revision if len(revision) <= SHOWN_LENGTH else revision[:SHOWN_LENGTH] + "…"
    return cut if _PLAIN_ID.fullmatch(revision) else repr(cut)


def _heads_phrase(heads: Sequence[str]) -> str:
    return f"{'head' if len(heads) == 1 else 'heads'} {_ids(heads)}"


def _ids(revisions: Sequence[str]) -> str:
    return ", ".join(revisions)
