"""Read a database's schema, read-only, and compare it with a reference in Alembic's terms."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from dashboard.config import BadDatabaseURL, parse_database_url, url_secrets
from dashboard.databases import versions
from dashboard.drift.differences import (
    UNNAMED,
    Difference,
    from_alembic,
    invalid_index,
    type_text,
)

# PostgreSQL keeps an index whose CREATE INDEX CONCURRENTLY failed, unusable but maintained.
_INVALID_INDEXES = sa.text(
    """
    SELECT t.relname AS table_name, i.relname AS index_name
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    JOIN pg_class t ON t.oid = x.indrelid
    JOIN pg_namespace n ON n.oid = t.relnamespace
    WHERE NOT x.indisvalid AND n.nspname = current_schema()
    ORDER BY 1, 2
    """
)


class SchemaReadError(Exception):
    """A schema could not be read; the message is short and holds no password."""


@dataclass(frozen=True)
class LiveComparison:
    """How a live database differs from a reference, and its tables as read."""

    differences: list[Difference]
    tables: list[dict[str, Any]] = field(default_factory=list)
    table_count: int = 0


def reflect(url: str, *, version_table: str, version_table_schema: str | None) -> sa.MetaData:
    """Reflect every table of the default schema but the version table (a scratch database)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        metadata = sa.MetaData()
        with engine.connect() as conn:
            default = sa.inspect(conn).default_schema_name
            skip = _version_table_filter(version_table, version_table_schema, default)
            metadata.reflect(conn, only=lambda name, _meta: not skip(name, None))
        return metadata
    finally:
        engine.dispose()


def version_heads(url: str, *, version_table: str, version_table_schema: str | None) -> set[str]:
    """Return the heads a (scratch) database's version table holds; none when it is missing."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={"version_table": version_table, "version_table_schema": version_table_schema},
            )
            return {str(head) for head in context.get_current_heads()}
    finally:
        engine.dispose()


def compare_live(
    url: str,
    reference: sa.MetaData,
    *,
    version_table: str,
    version_table_schema: str | None,
    timeout: float,
    deadline: float,
) -> LiveComparison:
    """Compare the live database at url with reference, within deadline seconds; read-only.

    Raises SchemaReadError with a masked message when the database cannot be read in time.
    """
    try:
        parsed = parse_database_url(url)
    except BadDatabaseURL as exc:
        raise SchemaReadError(str(exc)) from None
    box: list[LiveComparison | BaseException] = []

    def work() -> None:
        try:
            box.append(_compare(parsed, reference, version_table, version_table_schema, timeout))
        except BaseException as exc:  # handed to the caller's thread
            box.append(exc)

    # A daemon thread, as for version reads: a read stuck in a driver never holds the worker.
    thread = threading.Thread(target=work, name="schema-read", daemon=True)
    thread.start()
    thread.join(deadline + versions.DEADLINE_GRACE)
    if not box:
        raise SchemaReadError(f"reading the schema took longer than {deadline:g} s")
    result = box[0]
    if isinstance(result, BaseException):
        target = versions._Target(parsed, version_table, version_table_schema, timeout)
        if isinstance(result, Exception):
            _kind, message = versions._describe(result, target, "its schema")
        else:
            message = type(result).__name__
        raise SchemaReadError(versions.mask_secrets(message, url_secrets(parsed)))
    return result


def _compare(
    url: sa.URL,
    reference: sa.MetaData,
    version_table: str,
    version_table_schema: str | None,
    timeout: float,
) -> LiveComparison:
    if versions._is_sqlite_file(url) and not Path(str(url.database)).is_file():
        raise SchemaReadError(f"database file {url.database} does not exist")
    with versions._engine(url, timeout).connect() as conn:
        inspector = sa.inspect(conn)
        skip = _version_table_filter(
            version_table, version_table_schema, inspector.default_schema_name
        )

        def include_name(name: str | None, kind: str, parent: dict[str, str | None]) -> bool:
            if kind == "table":
                return not skip(name, parent.get("schema_name"))
            return True

        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_name": include_name}
        )
        differences = from_alembic(compare_metadata(context, reference), conn.dialect)
        if conn.dialect.name == "postgresql":
            differences = _with_invalid_indexes(
                differences, reference, list(conn.execute(_INVALID_INDEXES))
            )
        names = [n for n in inspector.get_table_names() if not skip(n, None)]
        tables = _describe_tables(inspector, names)
        conn.rollback()
    differences += _unnamed_unique_extras(reference, tables)
    differences.sort(key=lambda d: (d.table, d.kind, d.name))
    return LiveComparison(differences=differences, tables=tables, table_count=len(tables))


def _with_invalid_indexes(
    differences: list[Difference], reference: sa.MetaData, rows: list[Any]
) -> list[Difference]:
    """Add PostgreSQL's invalid indexes; one no revision creates is said once, as invalid."""
    invalid = {(row.table_name, row.index_name) for row in rows}
    kept = [
        d for d in differences if not (d.kind == "remove_index" and (d.table, d.name) in invalid)
    ]
    for table, name in sorted(invalid):
        known = reference.tables.get(table)
        in_reference = known is not None and any(i.name == name for i in known.indexes)
        kept.append(invalid_index(table, name, in_reference=in_reference))
    return kept


def _unnamed_unique_extras(
    reference: sa.MetaData, tables: list[dict[str, Any]]
) -> list[Difference]:
    """Return unnamed unique constraints (SQLite's) the live tables have and the reference lacks.

    Alembic reports only named ones as extra, since it cannot drop an unnamed one.
    """
    found = []
    for table in tables:
        known = reference.tables.get(table["name"])
        if known is None:
            continue  # the whole table is extra
        covered = {
            tuple(c.name for c in constraint.columns)
            for constraint in known.constraints
            if isinstance(constraint, sa.UniqueConstraint)
        } | {tuple(c.name for c in index.columns) for index in known.indexes if index.unique}
        for unique in table["unique_constraints"]:
            if not unique["name"] and tuple(unique["columns"]) not in covered:
                columns = ", ".join(unique["columns"])
                found.append(
                    Difference("remove_constraint", table["name"], UNNAMED, f" ({columns})")
                )
    return found


def _version_table_filter(
    version_table: str, version_table_schema: str | None, default_schema: str | None
) -> Any:
    wanted_schema = version_table_schema or default_schema

    def skip(name: str | None, schema: str | None) -> bool:
        return name == version_table and (schema or default_schema) == wanted_schema

    return skip


def _describe_tables(inspector: sa.Inspector, names: list[str]) -> list[dict[str, Any]]:
    """Return the tables as read: columns, primary key, indexes, unique constraints, foreign keys.

    One query per kind for all tables where the dialect can (PostgreSQL), not one per table.
    """
    if not names:
        return []
    columns = inspector.get_multi_columns(filter_names=names)
    pks = inspector.get_multi_pk_constraint(filter_names=names)
    indexes = inspector.get_multi_indexes(filter_names=names)
    try:
        uniques = inspector.get_multi_unique_constraints(filter_names=names)
    except NotImplementedError:
        uniques = {}
    fks = inspector.get_multi_foreign_keys(filter_names=names)
    described = []
    for name in sorted(names):
        key = (None, name)  # the default schema
        pk: dict[str, Any] = dict(pks.get(key) or {})
        described.append(
            {
                "name": name,
                "columns": [
                    {
                        "name": c["name"],
                        "type": type_text(c["type"], inspector.dialect),
                        "nullable": bool(c.get("nullable", True)),
                        "default": None if c.get("default") is None else str(c["default"]),
                    }
                    for c in columns.get(key, [])
                ],
                "primary_key": _names(pk.get("constrained_columns")),
                "indexes": [
                    {
                        "name": i.get("name") or "",
                        "columns": _names(i.get("column_names")),
                        "unique": bool(i.get("unique")),
                    }
                    for i in indexes.get(key, [])
                    if not i.get("duplicates_constraint")  # PostgreSQL's index of a constraint
                ],
                "unique_constraints": [
                    {"name": u.get("name") or "", "columns": _names(u.get("column_names"))}
                    for u in uniques.get(key, [])
                    if not u.get("duplicates_index")  # MySQL keeps it as a unique index
                ],
                "foreign_keys": [
                    {
                        "name": f.get("name") or "",
                        "columns": _names(f.get("constrained_columns")),
                        "references": f"{f.get('referred_table')}"
                        f"({', '.join(_names(f.get('referred_columns')))})",
                    }
                    for f in fks.get(key, [])
                ],
            }
        )
    return described


def _names(values: Any) -> list[str]:
    return [str(v) for v in values or () if v is not None]


def elapsed_ms(started: float) -> float:
    """Return the milliseconds since a perf_counter reading."""
    return (time.perf_counter() - started) * 1000
