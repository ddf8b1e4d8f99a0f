"""Whether Alembic could load each project's history, as the worker last checked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dashboard import scripts
from dashboard.config import ConfigError, current_config
from dashboard.models import HistoryCheck


@dataclass(frozen=True)
class LoadFailure:
    """The first failure of Alembic's own load of a history (masked when stored)."""

    project: str
    file: str
    line: int | None
    error: str
    checked_at: datetime


def load_failures(projects: list[str] | None = None) -> list[LoadFailure]:
    """Return the stored failures that still describe the projects' files, by project name."""
    try:
        names = sorted(current_config().projects) if projects is None else projects
    except ConfigError:
        return []
    failures = []
    checks = {c.project: c for c in HistoryCheck.objects.filter(project__in=names, ok=False)}
    for name in names:
        check = checks.get(name)
        # The cached static read's fingerprint: a file changed since the check makes it stale.
        if check is None or _fingerprint(name) != check.fingerprint:
            continue
        failures.append(LoadFailure(name, check.file, check.line, check.error, check.checked_at))
    return failures


def load_failure(*, project: str) -> LoadFailure | None:
    """Return the project's current load failure, or None when it loads or is unchecked."""
    found = load_failures([project])
    return found[0] if found else None


def history_check_json(*, project: str) -> dict[str, Any]:
    """Return the API's `history_check` field: the last check, and whether it still holds."""
    check = HistoryCheck.objects.filter(project=project).first()
    if check is None:
        return {"checked": False, "ok": None, "current": False}
    return {
        "checked": True,
        "ok": check.ok,
        # A check of files that changed since says nothing of them: it is never a refusal.
        "current": _fingerprint(project) == check.fingerprint,
        "file": check.file or None,
        "line": check.line,
        "error": check.error or None,
        "checked_at": check.checked_at.isoformat(),
    }


def _fingerprint(name: str) -> str | None:
    """Return the fingerprint of the project's files as the cached static read saw them."""
    try:
        project = current_config().projects.get(name)
        if project is None:
            return None
        return scripts.load_project_files(project).fingerprint
    except (ConfigError, scripts.ScriptLocationError, OSError):
        return None
