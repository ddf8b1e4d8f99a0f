"""Replay a project's history into a scratch database, and run `alembic check` there."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from dashboard.config import Project
from dashboard.databases import schema
from dashboard.runner import process
from dashboard.runner.process import ApprovedCopy, RunnerError

# `alembic check` prints "New upgrade operations detected: [('add_column', None, 'users',
# Column('phone_number', String(length=50), table=<users>)), ...]": the reprs of Alembic's diff
# tuples. Each operation starts with its quoted kind; the object it names follows in its repr.
_OPERATION = re.compile(r"\('(?P<kind>(?:add|remove|modify)_\w+)', ")
_COLUMN_OP = re.compile(r"\A(?:None|'[^']*'), '(?P<table>[^']+)', (?:Column\()?'(?P<name>[^']+)'")
_TABLE = re.compile(r"\A\w*Table\('(?P<name>[^']+)'")
_INDEX = re.compile(r"\AIndex\('(?P<name>[^']+)'")
_NAME = re.compile(r"\bname='(?P<name>[^']+)'")
_OWNER = re.compile(r"table=(?:<(?P<short>[^>]+)>|Table\('(?P<long>[^']+)')")
_COLUMN = re.compile(r"\bColumn\('(?P<name>[^']+)'")
_TARGET = re.compile(r"\bForeignKey\('(?P<target>[^']+)\.[^'.]+'\)")
_NO_CHANGES = "No new upgrade operations detected"
_CHANGES = "New upgrade operations detected"
# SQLAlchemy's error trailer says nothing of the failure: the exception's own line does.
_NOISE = ("INFO", "(Background on this error at:", "[SQL:", "[parameters:")
_EXCEPTION_LINE = re.compile(r"\A[\w.]*(?:Error|Exception|Exit): ")
NOT_WRITTEN = (
    "the replay did not write to the scratch database (env.py must take its URL from"
    " DATABASE_URL or sqlalchemy.url)"
)


@dataclass(frozen=True)
class ModelsCheck:
    """What `alembic check` said of the models against the history's heads."""

    state: str  # "in_sync", "drift" or "check_failed"
    operations: list[str] = field(default_factory=list)
    reason: str = ""


def replay(
    project: Project,
    url: str,
    heads: Sequence[str],
    *,
    approved: ApprovedCopy,
    time_limit: float,
    drop_env: Collection[str],
    version_table_schema: str | None = None,
) -> None:
    """Upgrade the empty database at url to every head in turn; raise RunnerError on failure.

    version_table_schema, when given, is where the replay's version table goes (written into
    the generated ini over the project's). The replay must leave exactly heads in the scratch
    database's own version table: else env.py connected somewhere else.
    """
    options = _ini_options(version_table_schema)
    for head in heads:
        result = process.upgrade(
            project,
            url,
            head,
            time_limit=time_limit,
            drop_env=drop_env,
            approved=approved,
            ini_options=options,
        )
        if result.timed_out:
            raise RunnerError(f"replaying to {head} took longer than {time_limit:g} s")
        if not result.succeeded:
            raise RunnerError(f"replaying to {head} failed: {_last_failure(result.output_tail)}")
    written = schema.version_heads(
        url, version_table=project.version_table, version_table_schema=version_table_schema
    )
    if written != set(heads):
        raise RunnerError(NOT_WRITTEN)


def check_models(
    project: Project,
    url: str,
    *,
    approved: ApprovedCopy,
    time_limit: float,
    drop_env: Collection[str],
    version_table_schema: str | None = None,
) -> ModelsCheck:
    """Run `alembic check` against the database at url (replayed to the heads)."""
    result = process.run_alembic(
        project,
        url,
        ["check"],
        time_limit=time_limit,
        drop_env=drop_env,
        approved=approved,
        ini_options=_ini_options(version_table_schema),
    )
    text = "\n".join(result.output_tail)
    if result.timed_out:
        return ModelsCheck(
            "check_failed", reason=f"alembic check took longer than {time_limit:g} s"
        )
    if result.succeeded and _NO_CHANGES in text:
        return ModelsCheck("in_sync")
    if _CHANGES in text:
        return ModelsCheck("drift", operations=operations_in(text))
    return ModelsCheck(
        "check_failed", reason=f"alembic check failed: {_last_failure(result.output_tail)}"
    )


def operations_in(text: str) -> list[str]:
    """Return "add_column users.phone_number"-style names of the operations alembic check listed."""
    # Alembic logs the list (ERROR ...) and prints it (FAILED: ...): read the first, one line.
    body = text.split(_CHANGES, 1)[-1].split("\n", 1)[0]
    starts = list(_OPERATION.finditer(body))
    found = []
    for at, match in enumerate(starts):
        end = starts[at + 1].start() if at + 1 < len(starts) else len(body)
        found.append(_operation(match["kind"], body[match.end() : end]))
    return list(dict.fromkeys(found)) or [body.strip()[:300]]


def _operation(kind: str, rest: str) -> str:
    """Name one operation from the repr of what follows its kind."""
    if kind.endswith("_column") or kind.startswith("modify_"):
        column = _COLUMN_OP.match(rest)
        if column:
            return f"{kind} {column['table']}.{column['name']}"
    elif kind.endswith("_table") or kind.endswith("_table_comment"):
        table = _TABLE.match(rest)
        if table:
            return f"{kind} {table['name']}"
    elif kind.endswith("_index"):
        index = _INDEX.match(rest)
        if index:
            return f"{kind} {index['name']} on {_owner(rest)}{_columns(rest)}"
    elif kind.endswith("_constraint") or kind.endswith("_fk"):
        # A UniqueConstraint's repr carries no name (even when it has one); a foreign key's does.
        named = _NAME.search(rest)
        what = "unique constraint" if kind.endswith("_constraint") else "foreign key"
        said = f"{kind} {named['name']}" if named else f"{kind} {what}"
        target = _TARGET.search(rest) if kind.endswith("_fk") else None
        columns = _columns(rest)
        if target:
            columns = f"{columns} -> {target['target']}"
        return f"{said} on {_owner(rest)}{columns}"
    return f"{kind} {rest.strip()[:120]}"


def _owner(rest: str) -> str:
    owner = _OWNER.search(rest)
    return (owner["short"] or owner["long"]) if owner else "?"


def _columns(rest: str) -> str:
    names = list(dict.fromkeys(m["name"] for m in _COLUMN.finditer(rest)))
    return f" ({', '.join(names)})" if names else ""


def _ini_options(version_table_schema: str | None) -> dict[str, str] | None:
    if version_table_schema is None:
        return None
    return {"version_table_schema": version_table_schema}


def _last_failure(lines: Sequence[str]) -> str:
    """Return what a failed run's output says went wrong, in one line."""
    failures = [line for line in lines if line.startswith("FAILED:")]
    if failures:
        return failures[-1].removeprefix("FAILED:").strip()[:300]
    meaningful = [line for line in lines if line.strip() and not line.startswith(_NOISE)]
    exceptions = [line for line in meaningful if _EXCEPTION_LINE.match(line)]
    chosen = exceptions or meaningful
    return (chosen[-1] if chosen else "no output").strip()[:300]
