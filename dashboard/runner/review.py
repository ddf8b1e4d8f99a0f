"""Prepare an action's offline SQL (upgrade, downgrade, stamp) and squawk's lint, in a subprocess."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashboard.config import BadDatabaseURL, Project, parse_database_url
from dashboard.history import Direction
from dashboard.runner import process

SQUAWK_TIMEOUT = 60.0
OFFLINE_SQL_TIMEOUT = 120.0
MAX_LINT_ITEMS = 200
# Every note of a preparation that failed starts so; one that starts otherwise says why the
# plan legitimately has no offline SQL (several starting heads, batch operations).
FAILED = "offline SQL could not be produced: "


@dataclass(frozen=True)
class PreparedSQL:
    """The plan's offline SQL with its sha256, or why there is none, and squawk's warnings."""

    sql: str = ""
    sql_sha256: str = ""
    note: str = ""
    lint: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def failure(cls, reason: object) -> PreparedSQL:
        """Return the preparation that failed for reason: nothing may be approved or run on it."""
        return cls(note=f"{FAILED}{reason}")

    @property
    def failed(self) -> bool:
        """Say whether the SQL could not be produced because something went wrong."""
        return note_says_failed(self.note)


def note_says_failed(note: str) -> bool:
    """Say whether a stored sql_note records a failed preparation, not an unavailable SQL."""
    return note.startswith(FAILED)


def plan_end(*, target: str, target_heads: Sequence[str]) -> str:
    """Return the revision the plan ends at, as Alembic should be told it: never a guess."""
    # Name the exact revision where there is one, so the range cannot mean anything else.
    if len(target_heads) == 1:
        return target_heads[0]
    if not target_heads:
        return "base"
    return target


def prepare_sql(
    project: Project,
    url: str,
    *,
    direction: Direction,
    from_heads: Sequence[str],
    target: str,
    target_heads: Sequence[str],
    drop_env: Collection[str] = (),
    approved: process.ApprovedCopy | None = None,
) -> PreparedSQL:
    """Render the plan's offline SQL in a subprocess and lint it on PostgreSQL; never raise.

    With approved, the SQL is rendered from that copy of the approved files: what runs later.
    """
    if len(from_heads) > 1:
        return PreparedSQL(
            note="offline SQL is not available for a plan that starts from several heads"
            f" ({', '.join(from_heads)}): Alembic's --sql mode takes one starting revision"
        )
    from_rev = from_heads[0] if from_heads else None
    to_rev = plan_end(target=target, target_heads=target_heads)
    try:
        sql = process.offline_sql(
            project,
            url,
            direction=direction,
            from_rev=from_rev,
            to_rev=to_rev,
            timeout=OFFLINE_SQL_TIMEOUT,
            drop_env=drop_env,
            approved=approved,
        )
    except process.OfflineSQLUnavailable as exc:
        return PreparedSQL(note=str(exc))
    except (process.RunnerError, ValueError) as exc:
        return PreparedSQL.failure(exc)
    lint = squawk_lint(sql) if _is_postgresql(url) else []
    return PreparedSQL(sql=sql, sql_sha256=sql_digest(sql), lint=lint)


def prepare_stamp_sql(
    project: Project,
    url: str,
    *,
    revisions: Sequence[str],
    table_exists: bool,
    drop_env: Collection[str] = (),
    approved: process.ApprovedCopy | None = None,
) -> PreparedSQL:
    """Render `alembic stamp <revisions>`'s SQL for a version table missing or empty; never raise.

    Offline, Alembic always creates the version table first; online it does only when the
    table is missing. With table_exists, that CREATE TABLE is left out (and the SQL says so),
    so the SQL is what the run writes.
    """
    try:
        sql = process.offline_stamp_sql(
            project,
            url,
            revisions,
            timeout=OFFLINE_SQL_TIMEOUT,
            drop_env=drop_env,
            approved=approved,
        )
    except (process.RunnerError, ValueError) as exc:
        return PreparedSQL.failure(exc)
    table = _qualified(project.version_table, project.version_table_schema)
    found = _version_table_create(project.version_table).search(sql)
    if found is None:
        return PreparedSQL.failure(
            f"Alembic's stamp SQL did not create the version table {table} as expected"
        )
    if table_exists:
        sql = (
            f"-- {table} exists and is empty, so Alembic does not create it:"
            " only its rows are written\n\n" + sql[: found.start()] + sql[found.end() :]
        )
    lint = squawk_lint(sql) if _is_postgresql(url) else []
    return PreparedSQL(sql=sql, sql_sha256=sql_digest(sql), lint=lint)


def stamp_creates_version_table(sql: str, version_table: str) -> bool:
    """Say whether a stamp's approved SQL creates the version table (it was missing then)."""
    return _version_table_create(version_table).search(sql) is not None


def _version_table_create(version_table: str) -> re.Pattern[str]:
    """Match Alembic's offline CREATE TABLE of the version table, through its blank line."""
    name = re.escape(version_table)
    return re.compile(
        rf'^CREATE TABLE (?:[^\s(]+\.)?(?:{name}|"{name}"|`{name}`) \(\n.*?^\);[ \t]*\n(?:[ \t]*\n)?',
        re.MULTILINE | re.DOTALL,
    )


def _qualified(table: str, schema: str | None) -> str:
    return f"{schema}.{table}" if schema else table


def sql_digest(sql: str) -> str:
    """Return the sha256 hex digest of the SQL text."""
    return hashlib.sha256(sql.encode()).hexdigest()


def squawk_path() -> str | None:
    """Return squawk's executable: beside this interpreter (squawk-cli), else on PATH."""
    beside = Path(sys.executable).parent / "squawk"
    if beside.is_file():
        return str(beside)
    return shutil.which("squawk")


def squawk_lint(sql: str, *, executable: str | None = None) -> list[dict[str, Any]]:
    """Return squawk's lock-risk warnings for PostgreSQL SQL as {line, level, message, rule, help}."""
    squawk = executable or squawk_path()
    if squawk is None:
        return [_note("squawk is not installed, so the SQL was not checked for lock risks")]
    # squawk looks for .squawk.toml from its cwd up: an empty one in an empty folder keeps a
    # stray one (in /tmp, say) from changing the rules.
    with tempfile.TemporaryDirectory(prefix="dashboard-squawk-") as folder:
        (Path(folder) / ".squawk.toml").touch()
        try:
            done = subprocess.run(
                # Alembic's offline SQL spells its transactions out: BEGIN; ... COMMIT;, and
                # around an autocommit_block COMMIT; before it and BEGIN; after. So squawk must
                # not assume a wrapper of its own: then it sees which statements run outside
                # one (CREATE INDEX CONCURRENTLY in an autocommit_block is fine, one inside
                # the transaction is flagged) instead of calling every BEGIN nested.
                [
                    squawk,
                    "--no-assume-in-transaction",
                    "--reporter",
                    "json",
                    "--stdin-filepath",
                    "plan.sql",
                ],
                input=sql,
                capture_output=True,
                text=True,
                timeout=SQUAWK_TIMEOUT,
                cwd=folder,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return [_note(f"squawk could not check the SQL: {exc}")]
    try:
        found = json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        found = None
    if not isinstance(found, list):
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return [_note(f"squawk could not check the SQL: {detail[0]}")]
    items = [_lint_item(item) for item in found if isinstance(item, dict)]
    if len(items) > MAX_LINT_ITEMS:
        hidden = len(items) - MAX_LINT_ITEMS
        items = [*items[:MAX_LINT_ITEMS], _note(f"{hidden} more warnings are not shown")]
    return items


def _lint_item(item: dict[str, Any]) -> dict[str, Any]:
    line = item.get("line")
    return {
        # squawk counts lines from 0; people and editors count from 1.
        "line": line + 1 if isinstance(line, int) else None,
        "level": str(item.get("level") or "warning").lower(),
        "message": str(item.get("message") or ""),
        "rule": str(item.get("rule_name") or ""),
        "help": str(item.get("help") or ""),
    }


def _note(message: str) -> dict[str, Any]:
    return {"line": None, "level": "info", "message": message, "rule": "", "help": ""}


def _is_postgresql(url: str) -> bool:
    try:
        return parse_database_url(url).get_backend_name() == "postgresql"
    except BadDatabaseURL:
        return False
