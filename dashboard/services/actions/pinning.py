"""Plan an action from an environment's heads, and prepare its offline SQL and lint for review."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashboard import runner, scripts
from dashboard.config import BadDatabaseURL, Project, parse_database_url
from dashboard.history import Direction, Graph, Step

SQUAWK_TIMEOUT = 60.0
OFFLINE_SQL_TIMEOUT = 120.0
MAX_LINT_ITEMS = 200


class ProjectCodeNeeded(Exception):
    """Reading this project's history means running its code, which only the worker may do."""


@dataclass(frozen=True)
class Plan:
    """The steps Alembic will run from from_heads to a target, and the heads they leave."""

    from_heads: tuple[str, ...]
    steps: list[Step]
    target_heads: tuple[str, ...]

    @property
    def revisions(self) -> list[str]:
        """Return the revision ids in the order Alembic runs them."""
        return [step.revision for step in self.steps]


@dataclass(frozen=True)
class PreparedSQL:
    """The plan's offline SQL with its sha256, or why there is none, and squawk's warnings."""

    sql: str = ""
    sql_sha256: str = ""
    note: str = ""
    lint: list[dict[str, Any]] = field(default_factory=list)


def load_project_history(project: Project, *, may_run_project_code: bool) -> scripts.LoadedHistory:
    """Return the project's graph and fingerprint, refusing Alembic's loader outside the worker."""
    if project.loader == "alembic":
        if not may_run_project_code:
            raise ProjectCodeNeeded(
                f"project {project.name} is read with Alembic's own loader, which runs its code;"
                " plan its actions from the command line (manage.py action request)"
            )
        return scripts.load_history_with_alembic(
            project.script_location,
            alembic_ini=project.alembic_ini,
            python=project.python or sys.executable,
        )
    return scripts.load_history(project.script_location, alembic_ini=project.alembic_ini)


def current_fingerprint(project: Project) -> str:
    """Return the fingerprint of the code an action would run, as it is now, without parsing."""
    revisions = scripts.fingerprint(project.script_location, alembic_ini=project.alembic_ini)
    return code_fingerprint(project, revisions)


def code_fingerprint(project: Project, revisions_fingerprint: str) -> str:
    """Fold the files that run around the revisions (env.py, its neighbours, the ini) in."""
    # An approval must not carry over to an edited env.py: it runs with every revision.
    digest = hashlib.sha256(revisions_fingerprint.encode())
    around = sorted(project.script_location.glob("*.py"))
    if project.alembic_ini is not None:
        around.append(project.alembic_ini)
    for path in around:
        try:
            stat = path.stat()
        except OSError:
            continue  # gone since the glob; its absence shows in the next fingerprint
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def make_plan(graph: Graph, from_heads: Sequence[str], target: str, direction: Direction) -> Plan:
    """Return exactly the steps `alembic <direction> <target>` would run, in Alembic's order."""
    current = tuple(from_heads)
    steps = graph.plan(current, target, direction)
    return Plan(
        from_heads=current, steps=steps, target_heads=tuple(graph.heads_after(current, steps))
    )


def plan_hash(
    *,
    environment: str,
    direction: str,
    target: str,
    from_heads: Sequence[str],
    plan: Sequence[str],
    sql_sha256: str,
    fingerprint: str,
) -> str:
    """Return sha256 over the canonical JSON of everything an approval vouches for."""
    document = {
        "environment": environment,
        "direction": direction,
        "target": target,
        "from_heads": sorted(from_heads),
        "plan": list(plan),
        "sql_sha256": sql_sha256,
        "fingerprint": fingerprint,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def prepare_sql(
    project: Project,
    url: str,
    *,
    direction: Direction,
    from_heads: Sequence[str],
    target: str,
    target_heads: Sequence[str],
    drop_env: Collection[str] = (),
) -> PreparedSQL:
    """Render the plan's offline SQL in a subprocess and lint it on PostgreSQL; never raise."""
    if len(from_heads) > 1:
        return PreparedSQL(
            note="offline SQL is not available for a plan that starts from several heads"
            f" ({', '.join(from_heads)}): Alembic's --sql mode takes one starting revision"
        )
    from_rev = from_heads[0] if from_heads else None
    # Name the exact revision where there is one, so the range cannot mean anything else.
    if len(target_heads) == 1:
        to_rev = target_heads[0]
    elif not target_heads:
        to_rev = "base"
    else:
        to_rev = target
    try:
        sql = runner.offline_sql(
            project,
            url,
            direction=direction,
            from_rev=from_rev,
            to_rev=to_rev,
            timeout=OFFLINE_SQL_TIMEOUT,
            drop_env=drop_env,
        )
    except runner.OfflineSQLUnavailable as exc:
        return PreparedSQL(note=str(exc))
    except (runner.RunnerError, ValueError) as exc:
        return PreparedSQL(note=f"offline SQL could not be produced: {exc}")
    lint = squawk_lint(sql) if _is_postgresql(url) else []
    return PreparedSQL(sql=sql, sql_sha256=sql_digest(sql), lint=lint)


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
    # An empty folder as cwd, so a stray .squawk.toml cannot change the rules.
    with tempfile.TemporaryDirectory(prefix="dashboard-squawk-") as folder:
        try:
            done = subprocess.run(
                [squawk, "--reporter", "json", "--stdin-filepath", "plan.sql"],
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
