"""The live schema of a schema check, table by table, with its drifted items marked."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dashboard.drift.differences import UNNAMED, Difference, describe

# How the live schema's items are matched to differences: the kind's object, by name.
_OBJECT_OF_KIND = {
    "add_table": "table",
    "remove_table": "table",
    "add_table_comment": "table",
    "remove_table_comment": "table",
    "add_column": "column",
    "remove_column": "column",
    "modify_type": "column",
    "modify_nullable": "column",
    "modify_default": "column",
    "modify_comment": "column",
    "add_index": "index",
    "remove_index": "index",
    "invalid_index": "index",
    "add_constraint": "constraint",
    "remove_constraint": "constraint",
    "add_fk": "fk",
    "remove_fk": "fk",
}
# Kinds naming an object the live database lacks: there is no live item to mark, so the
# table lists it as missing.
_MISSING_KINDS = {"add_table", "add_column", "add_index", "add_constraint", "add_fk"}


@dataclass(frozen=True)
class LiveColumn:
    """One column as read, and what drifted about it ("" when nothing did)."""

    name: str
    type: str
    nullable: bool
    default: str | None
    drift: str


@dataclass(frozen=True)
class LiveItem:
    """One index, unique constraint or foreign key as read, and what drifted about it."""

    name: str
    columns: str
    extra: str  # "unique" for an index, "-> users(id)" for a foreign key
    drift: str


@dataclass(frozen=True)
class LiveTable:
    """One table of the live schema as read, its drifted items marked."""

    name: str
    columns: tuple[LiveColumn, ...]
    primary_key: str
    indexes: tuple[LiveItem, ...]
    unique_constraints: tuple[LiveItem, ...]
    foreign_keys: tuple[LiveItem, ...]
    drift: str  # the table itself: it exists but no revision creates it
    missing: tuple[str, ...]  # what the revisions create and the table lacks, in words
    understood: bool = True  # False: part of what was stored is in a shape not understood

    @property
    def drifted(self) -> bool:
        """Say whether anything of this table differs from the reference."""
        return bool(
            self.drift
            or self.missing
            or any(c.drift for c in self.columns)
            or any(i.drift for i in (*self.indexes, *self.unique_constraints, *self.foreign_keys))
        )


def _marks(differences: Iterable[Difference], environment: str) -> dict[tuple[str, str, str], str]:
    """Return each difference's words by (table, object, name), to mark live items with."""
    marks: dict[tuple[str, str, str], list[str]] = {}
    for d in differences:
        kind = _OBJECT_OF_KIND.get(d.kind, "")
        # A constraint without a name (SQLite's) is known by its columns, as its detail says
        # (a foreign key's detail may end with its ON DELETE/UPDATE options).
        name = d.detail.split(" ON ", 1)[0] if d.name == UNNAMED else d.name
        marks.setdefault((d.table, kind, name), []).append(describe(d, environment))
    return {key: "; ".join(words) for key, words in marks.items()}


def live_tables(
    live_schema: Any, differences: list[Difference], environment: str
) -> tuple[tuple[LiveTable, ...], bool]:
    """Return a check's stored live schema table by table, and whether its shape was understood."""
    if not live_schema:
        return (), True  # a check that read no tables stores none
    tables = live_schema.get("tables", []) if isinstance(live_schema, dict) else None
    if not isinstance(tables, list):
        return (), False
    found = tuple(live_table(t, differences, environment) for t in tables if isinstance(t, dict))
    return found, len(found) == len(tables) and all(t.understood for t in found)


def live_table(table: dict[str, Any], differences: list[Difference], environment: str) -> LiveTable:
    """Return one table of a check's live schema with the differences that touch it marked."""
    name = str(table.get("name", ""))
    mine = [d for d in differences if d.table == name]
    marks = _marks((d for d in mine if d.kind not in _MISSING_KINDS), environment)
    # Stored by another version of the dashboard, or by hand: what is not understood is left
    # out and said so, never a server error.
    odd: list[str] = []

    def dicts(value: Any) -> list[dict[str, Any]]:
        rows = value if isinstance(value, list) else []
        found = [row for row in rows if isinstance(row, dict)]
        if not isinstance(value, list) or len(found) != len(rows):
            odd.append(name)
        return found

    def names(value: Any) -> str:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            odd.append(name)
            return ", ".join(str(item) for item in value) if isinstance(value, list) else ""
        return ", ".join(value)

    def mark(kind: str, item: str) -> str:
        return marks.get((name, kind, item), "")

    def fk_mark(fk: dict[str, Any]) -> str:
        if fk.get("name"):
            return mark("fk", str(fk["name"]))
        target = str(fk.get("references", "")).split("(", 1)[0]
        return mark("fk", f" ({names(fk.get('columns', []))}) -> {target}")

    def unique_mark(unique: dict[str, Any]) -> str:
        if unique.get("name"):
            return mark("constraint", str(unique["name"]))
        return mark("constraint", f" ({names(unique.get('columns', []))})")

    columns = tuple(
        LiveColumn(
            name=str(c.get("name", "")),
            type=str(c.get("type", "")),
            nullable=bool(c.get("nullable", True)),
            default=None if c.get("default") is None else str(c.get("default")),
            drift=mark("column", str(c.get("name", ""))),
        )
        for c in dicts(table.get("columns", []))
    )
    primary_key = names(table.get("primary_key", []))
    indexes = tuple(
        LiveItem(
            name=str(i.get("name", "")),
            columns=names(i.get("columns", [])),
            extra="unique" if i.get("unique") else "",
            # A unique constraint may be read back as a unique index (MariaDB).
            drift=mark("index", str(i.get("name", "")))
            or mark("constraint", str(i.get("name", ""))),
        )
        for i in dicts(table.get("indexes", []))
    )
    unique_constraints = tuple(
        LiveItem(
            name=str(u.get("name", "")),
            columns=names(u.get("columns", [])),
            extra="",
            drift=unique_mark(u),
        )
        for u in dicts(table.get("unique_constraints", []))
    )
    foreign_keys = tuple(
        LiveItem(
            name=str(f.get("name", "")),
            columns=names(f.get("columns", [])),
            extra=f"-> {f.get('references', '')}",
            drift=fk_mark(f),
        )
        for f in dicts(table.get("foreign_keys", []))
    )
    return LiveTable(
        name=name,
        columns=columns,
        primary_key=primary_key,
        indexes=indexes,
        unique_constraints=unique_constraints,
        foreign_keys=foreign_keys,
        drift=mark("table", name),
        missing=tuple(
            describe(d, environment) for d in mine if d.kind in _MISSING_KINDS - {"add_table"}
        ),
        understood=not odd,
    )
