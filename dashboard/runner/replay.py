"""Replay a project's history into a scratch database, and run `alembic check` there."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from dashboard.config import Project
from dashboard.runner import process
from dashboard.runner.process import ApprovedCopy, RunnerError

# `alembic check` prints "New upgrade operations detected: [('add_column', None, 'users',
# Column('phone_number', ...)), ...]"; these pick the operation and the object it names.
_COLUMN_OP = re.compile(
    r"\('(?P<kind>\w+)', (?:None|'[^']*'), '(?P<table>[^']+)', '?(?:Column\(')?(?P<name>[^',)]+)"
)
_TABLE_OP = re.compile(r"\('(?P<kind>add_table|remove_table)', Table\('(?P<name>[^']+)'")
_INDEX_OP = re.compile(r"\('(?P<kind>add_index|remove_index)', Index\('(?P<name>[^']+)'")
_CONSTRAINT_OP = re.compile(
    r"\('(?P<kind>add_constraint|remove_constraint|add_fk|remove_fk)', (?:\w+)\((?:name=)?'?(?P<name>[^',)]*)"
)
_NO_CHANGES = "No new upgrade operations detected"
_CHANGES = "New upgrade operations detected"


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
) -> None:
    """Upgrade the empty database at url to every head in turn; raise RunnerError on failure."""
    for head in heads:
        result = process.upgrade(
            project, url, head, time_limit=time_limit, drop_env=drop_env, approved=approved
        )
        if result.timed_out:
            raise RunnerError(f"replaying to {head} took longer than {time_limit:g} s")
        if not result.succeeded:
            raise RunnerError(f"replaying to {head} failed: {_last_failure(result.output_tail)}")


def check_models(
    project: Project,
    url: str,
    *,
    approved: ApprovedCopy,
    time_limit: float,
    drop_env: Collection[str],
) -> ModelsCheck:
    """Run `alembic check` against the database at url (replayed to the heads)."""
    result = process.run_alembic(
        project, url, ["check"], time_limit=time_limit, drop_env=drop_env, approved=approved
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
    found: list[str] = []
    body = text.split(_CHANGES, 1)[-1]
    for match in _TABLE_OP.finditer(body):
        found.append(f"{match['kind']} {match['name']}")
    for match in _INDEX_OP.finditer(body):
        found.append(f"{match['kind']} {match['name']}")
    for match in _COLUMN_OP.finditer(body):
        if match["kind"] in ("add_column", "remove_column") or match["kind"].startswith("modify_"):
            found.append(f"{match['kind']} {match['table']}.{match['name']}")
    for match in _CONSTRAINT_OP.finditer(body):
        found.append(f"{match['kind']} {match['name'] or '(unnamed)'}".rstrip())
    return found or [body.strip()[:300]]


def _last_failure(lines: Sequence[str]) -> str:
    failures = [line for line in lines if line.startswith("FAILED:")]
    if failures:
        return failures[-1].removeprefix("FAILED:").strip()[:300]
    meaningful = [line for line in lines if line.strip() and not line.startswith("INFO")]
    return (meaningful[-1] if meaningful else "no output").strip()[:300]
