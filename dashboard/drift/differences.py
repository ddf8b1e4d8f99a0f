"""Turn Alembic's autogenerate differences into plain, storable words (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Alembic compares the reference (as "metadata") with the live database, so its operation names
# say what would make the live schema what the revisions produce: "add_column" means the live
# database lacks a column a revision creates; "remove_column" that it has one no revision creates.
KINDS = (
    "add_table",
    "remove_table",
    "add_column",
    "remove_column",
    "modify_type",
    "modify_nullable",
    "modify_default",
    "modify_comment",
    "add_index",
    "remove_index",
    "add_constraint",
    "remove_constraint",
    "add_fk",
    "remove_fk",
    "add_table_comment",
    "remove_table_comment",
    "invalid_index",
)
_PART_OF_A_TABLE = (
    "add_index",
    "add_constraint",
    "add_fk",
    "remove_index",
    "remove_constraint",
    "remove_fk",
)
UNNAMED = "(unnamed)"  # the name said for a constraint the database keeps no name of
UNIQUE = ", unique"  # how an index's detail says the index is unique


@dataclass(frozen=True)
class Difference:
    """One way the live schema differs from the reference: Alembic's operation and its object."""

    kind: str
    table: str
    name: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        """Return the stored form: {kind, table, name, detail}."""
        return asdict(self)

    def words(self, environment: str) -> str:
        """Say the difference in a sentence, naming the environment."""
        return describe(self, environment)


def from_alembic(diffs: Iterable[Any], dialect: Any = None) -> list[Difference]:
    """Convert compare_metadata's output (tuples, and lists of modify tuples) to differences.

    Types are written as dialect (the live database's) spells them when given: "TIMESTAMP
    WITHOUT TIME ZONE", not the generic "TIMESTAMP" both sides of a time zone change share.
    """
    found: list[Difference] = []
    for diff in diffs:
        if isinstance(diff, list):
            found.extend(_modify(item, dialect) for item in diff)
        else:
            found.append(_simple(diff, dialect))
    # Alembic lists a missing or extra table's indexes and unique constraints one by one (on
    # MySQL even the index made for each foreign key): they are part of "table T is missing".
    whole = {(d.table, d.kind.split("_", 1)[0]) for d in found if d.kind.endswith("_table")}
    found = [
        d
        for d in found
        if not (d.kind in _PART_OF_A_TABLE and (d.table, d.kind.split("_", 1)[0]) in whole)
    ]
    return sorted(found, key=lambda d: (d.table, d.kind, d.name))


def from_dicts(rows: Iterable[dict[str, Any]]) -> list[Difference]:
    """Read stored differences back, tolerating rows from older versions of the dashboard."""
    return [
        Difference(
            kind=str(row.get("kind", "")),
            table=str(row.get("table", "")),
            name=str(row.get("name", "")),
            detail=str(row.get("detail", "")),
        )
        for row in rows
    ]


def by_table(differences: Sequence[Difference]) -> list[tuple[str, list[Difference]]]:
    """Group differences by table, tables in name order."""
    groups: dict[str, list[Difference]] = {}
    for difference in differences:
        groups.setdefault(difference.table, []).append(difference)
    return sorted(groups.items())


def invalid_index(table: str, name: str, *, in_reference: bool) -> Difference:
    """Return the difference for a PostgreSQL index left invalid by a failed concurrent build."""
    return Difference("invalid_index", table, name, "" if in_reference else EXTRA_INVALID)


EXTRA_INVALID = "no revision creates it"


def describe(difference: Difference, environment: str) -> str:
    """Say one difference as people read it."""
    d, env = difference, environment or "the database"
    column = f"{d.table}.{d.name}"
    match d.kind:
        case "add_table":
            return f"table {d.table} is missing in {env} (the revisions create it)"
        case "remove_table":
            return f"table {d.table} exists in {env} but no revision creates it"
        case "add_column":
            return f"column {column} is missing in {env} (the revisions create it)"
        case "remove_column":
            return f"column {column} exists in {env} but no revision creates it"
        case "modify_type":
            return f"column {column} {d.detail}"
        case "modify_nullable":
            return f"column {column} {d.detail}"
        case "modify_default":
            return f"column {column} {d.detail}"
        case "modify_comment":
            return f"the comment of column {column} {d.detail or 'differs'}"
        case "add_index":
            return f"{_index(d)} is missing in {env}"
        case "remove_index":
            return f"{_index(d)} exists in {env} but no revision creates it"
        case "add_constraint":
            # Alembic compares unique constraints only (not check constraints).
            return f"{_named('unique constraint', d)} is missing in {env}"
        case "remove_constraint":
            return f"{_named('unique constraint', d)} exists in {env} but no revision creates it"
        case "add_fk":
            return f"{_named('foreign key', d)} is missing in {env}"
        case "remove_fk":
            return f"{_named('foreign key', d)} exists in {env} but no revision creates it"
        case "add_table_comment" | "remove_table_comment":
            return f"the comment of table {d.table} differs"
        case "invalid_index":
            said = (
                f"index {d.name} on {d.table} is invalid in {env}"
                " (a failed CREATE INDEX CONCURRENTLY leaves it so)"
            )
            if d.detail == EXTRA_INVALID:
                return f"{said} and no revision creates it: drop it"
            return f"{said}: drop it and build it again"
    return f"{d.kind} {d.table} {d.name} {d.detail}".strip()


def _named(what: str, d: Difference) -> str:
    if d.name == UNNAMED:  # SQLite keeps no name for a constraint made without one
        return f"an unnamed {what} on {d.table}{d.detail}"
    return f"{what} {d.name} on {d.table}{d.detail}"


def _index(d: Difference) -> str:
    columns, unique = d.detail, d.detail.endswith(UNIQUE)
    if unique:
        columns = columns.removesuffix(UNIQUE)
    return f"{'unique index' if unique else 'index'} {d.name} on {d.table}{columns}"


def _simple(diff: tuple[Any, ...], dialect: Any) -> Difference:
    kind = str(diff[0])
    if kind in ("add_table", "remove_table"):
        return Difference(kind, diff[1].name, diff[1].name, "")
    if kind in ("add_column", "remove_column"):
        column = diff[3]
        return Difference(kind, str(diff[2]), column.name, type_text(column.type, dialect))
    if kind in ("add_index", "remove_index"):
        index = diff[1]
        detail = _columns_text(index) + (UNIQUE if index.unique else "")
        return Difference(kind, index.table.name, str(index.name), detail)
    if kind in ("add_constraint", "remove_constraint"):
        constraint = diff[1]
        return Difference(
            kind,
            constraint.table.name,
            str(constraint.name or UNNAMED),
            _columns_text(constraint),
        )
    if kind in ("add_fk", "remove_fk"):
        fk = diff[1]
        target = fk.elements[0].target_fullname.rsplit(".", 1)[0] if fk.elements else "?"
        # The options too: a key whose ON DELETE differs is one removed and one added, and
        # without them the two would read alike.
        options = "".join(
            f" ON {event} {value.upper()}"
            for event, value in (("DELETE", fk.ondelete), ("UPDATE", fk.onupdate))
            if value
        )
        detail = f" ({', '.join(fk.column_keys)}) -> {target}{options}"
        return Difference(kind, fk.table.name, str(fk.name or UNNAMED), detail)
    if kind in ("add_table_comment", "remove_table_comment"):
        return Difference(kind, diff[1].name, diff[1].name, "")
    # An operation this version does not know: keep what can be said about it.
    return Difference(kind, "", "", repr(diff[1:])[:200])


def _modify(diff: tuple[Any, ...], dialect: Any) -> Difference:
    # ("modify_type", schema, table, column, existing_kw, live_value, reference_value)
    kind, table, column = str(diff[0]), str(diff[2]), str(diff[3])
    live, reference = diff[5], diff[6]
    if kind == "modify_type":
        detail = (
            f"is {type_text(live, dialect)}; the revisions make it {type_text(reference, dialect)}"
        )
    elif kind == "modify_nullable":
        detail = (
            f"is {'NULL' if live else 'NOT NULL'};"
            f" the revisions make it {'NULL' if reference else 'NOT NULL'}"
        )
    elif kind == "modify_comment":
        detail = f"is {_comment_text(live)}; the revisions give {_comment_text(reference)}"
    elif kind == "modify_default":
        detail = f"has default {_default_text(live)}; the revisions give {_default_text(reference)}"
    else:
        detail = ""
    return Difference(kind, table, column, detail)


def type_text(value: Any, dialect: Any = None) -> str:
    """Spell a column type as dialect writes it, else generically."""
    if dialect is not None:
        try:
            return str(value.compile(dialect=dialect))
        except Exception:  # noqa: S110 - a type of another dialect: the generic spelling follows
            pass
    try:
        return str(value.compile())
    except Exception:  # a dialect-only type compiles only with its dialect
        return str(value)


def _comment_text(value: Any) -> str:
    return "none" if value is None else repr(str(value))


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    text = getattr(value, "arg", value)
    return str(getattr(text, "text", text))


def _columns_text(item: Any) -> str:
    names = [getattr(c, "name", str(c)) for c in getattr(item, "columns", ())]
    return f" ({', '.join(names)})" if names else ""
