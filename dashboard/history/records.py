"""Hold what a history is made of: revision files as read, and the steps Alembic runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["upgrade", "downgrade"]


@dataclass(frozen=True)
class Revision:
    """One revision file as read from disk."""

    revision: str
    down_revisions: tuple[str, ...]
    depends_on: tuple[str, ...] = ()
    branch_labels: tuple[str, ...] = ()
    message: str = ""
    docstring: str = ""
    create_date: str | None = None
    path: str = ""
    problems: tuple[str, ...] = ()
    # What upgrade() and downgrade() run outside Alembic's transaction, read statically, as
    # "autocommit_block at line 31" or "CREATE INDEX CONCURRENTLY (...) at line 40".
    upgrade_outside_transaction: tuple[str, ...] = ()
    downgrade_outside_transaction: tuple[str, ...] = ()
    # The run limits the file sets for itself (its dashboard_limits), as sorted (name, duration).
    limits: tuple[tuple[str, str], ...] = ()
    # A placeholder for a file that does not parse: its id is a guess and its down revisions
    # unknown; probable_parents are the ids its down_revision (or "Revises:") line names.
    unreadable: bool = False
    probable_parents: tuple[str, ...] = ()

    def outside_transaction(self, direction: Direction) -> tuple[str, ...]:
        """Return what this revision runs outside a transaction in that direction."""
        if direction == "downgrade":
            return self.downgrade_outside_transaction
        return self.upgrade_outside_transaction


@dataclass(frozen=True)
class Step:
    """One migration Alembic would run, as in its "Running upgrade A -> B, message" line."""

    revision: str
    direction: Direction
    from_revisions: tuple[str, ...]
    to_revisions: tuple[str, ...]
    message: str = ""

    def __str__(self) -> str:
        text = (
            f"{self.direction} {', '.join(self.from_revisions)} -> {', '.join(self.to_revisions)}"
        )
        return f"{text}, {self.message}" if self.message else text

    @property
    def log_line(self) -> str:
        """Return the line Alembic logs just before running this step."""
        return f"Running {self}"
