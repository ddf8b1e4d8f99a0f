"""Check in the worker that Alembic itself can load each project's history; record the answer."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Mapping, Set
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from dashboard import scripts
from dashboard.config import (
    BadDatabaseURL,
    ConfigError,
    DashboardConfig,
    Project,
    current_config,
    parse_database_url,
    url_secrets,
)
from dashboard.databases.connect import mask_secrets
from dashboard.models import HistoryCheck
from dashboard.runner.process import IMPORT_VARIABLES, replay_secrets
from dashboard.scripts.childenv import allowed_environment
from dashboard.scripts.load_check import check_history_loads
from dashboard.services import queue

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 600.0  # seconds between checks of an unchanged script directory
TICK = 60.0  # seconds between the worker's looks for changed or due directories
_URL_PASSWORD = re.compile(r"(?P<head>\b[\w+.-]+://[^\s:/@]*:)[^\s@]+@")


def check_interval() -> float:
    """Return the seconds after which an unchanged script directory is checked again."""
    return float(getattr(settings, "DASHBOARD_HISTORY_CHECK_INTERVAL", DEFAULT_INTERVAL))


def check_environment(inherited: Mapping[str, str], secret_names: Set[str]) -> dict[str, str]:
    """Return the few variables the check's child gets: nothing of the dashboard's own."""
    # Import overrides too: the check must load the history as the project's own python does.
    return allowed_environment(inherited, refused=secret_names | IMPORT_VARIABLES)


def history_check_run(*, project: Project, config: DashboardConfig | None = None) -> HistoryCheck:
    """Ask Alembic, in a subprocess of the project's interpreter, to load the history; store it."""
    config = config or current_config()
    secret_names = replay_secrets(config)
    found = check_history_loads(
        project.script_location,
        alembic_ini=project.alembic_ini,
        python=project.python or sys.executable,
        env=check_environment(os.environ, secret_names),
    )
    error = _masked(found.error, secret_names)
    check, _ = HistoryCheck.objects.update_or_create(
        project=project.name,
        defaults={
            "fingerprint": found.fingerprint,
            "ok": found.ok,
            "file": _relative(found.file, project)[:500],
            "line": found.line,
            "error": error,
            "checked_at": timezone.now(),
        },
    )
    if not found.ok:
        logger.warning("Alembic cannot load project %s's history: %s", project.name, error)
    return check


def histories_check_due(*, now: datetime | None = None) -> list[str]:
    """Check every project whose files changed or whose last check is old; return their names."""
    now = now or timezone.now()
    config = current_config()
    stored = {check.project: check for check in HistoryCheck.objects.all()}
    oldest = now - timedelta(seconds=check_interval())
    checked = []
    for name, project in sorted(config.projects.items()):
        try:
            stamp = scripts.fingerprint(project.script_location, alembic_ini=project.alembic_ini)
        except (scripts.ScriptLocationError, OSError):
            continue  # the pages say the directory cannot be read
        last = stored.get(name)
        if last is not None and last.fingerprint == stamp and last.checked_at > oldest:
            continue
        try:
            history_check_run(project=project, config=config)
        except Exception:  # one project's failure never stops the others' checks
            logger.exception("could not check whether Alembic loads project %s", name)
            continue
        checked.append(name)
    # Checks of projects no longer configured describe nothing anyone sees.
    HistoryCheck.objects.exclude(project__in=list(config.projects)).delete()
    return checked


def schedule_periodic_history_checks(*, delay: float = 0.0) -> bool:
    """Enqueue the periodic look for histories to check unless one waits; say if this did."""
    return queue.schedule_once("check_histories_periodically", delay=delay)


def failing_check(*, project: str, fingerprint: str) -> HistoryCheck | None:
    """Return the project's failed check if it describes these files; a stale one never counts."""
    check = HistoryCheck.objects.filter(project=project, ok=False).first()
    if check is None or check.fingerprint != fingerprint:
        return None
    return check


def refusal(*, project: str, fingerprint: str) -> str:
    """Say why nothing may be requested while Alembic cannot load the history; "" when it can."""
    check = failing_check(project=project, fingerprint=fingerprint)
    if check is None:
        return ""
    return f"{failure_text(check)}; nothing can be requested until it loads"


def failure_text(check: HistoryCheck) -> str:
    """Return "Alembic cannot load project X's history at file:line: error"."""
    where = f" at {check.file}{f':{check.line}' if check.line else ''}" if check.file else ""
    return f"Alembic cannot load project {check.project}'s history{where}: {check.error}"


def _masked(message: str, secret_names: set[str]) -> str:
    """Remove every secret the worker holds, and any URL's password, from a message."""
    secrets: set[str] = set()
    for name in secret_names:
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        secrets.add(value)
        for line in value.splitlines():
            for candidate in (line.strip(), line.partition("=")[2].strip()):
                with contextlib.suppress(BadDatabaseURL, ConfigError, ValueError):
                    secrets.update(url_secrets(parse_database_url(candidate)))
    masked = mask_secrets(message, sorted(secrets, key=len, reverse=True))
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***@", masked)[:4000]


def _relative(path: str, project: Project) -> str:
    if not path:
        return ""
    base = project.alembic_ini.parent if project.alembic_ini else project.script_location
    try:
        relative = os.path.relpath(path, base)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative.replace(os.sep, "/")
