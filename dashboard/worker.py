"""The worker's own machinery: a running action's monitor, and the periodic housekeeping."""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F, TextField, Value
from django.db.models.functions import Concat
from django.tasks import TaskResultStatus
from django.utils import timezone

from dashboard import audit, runner
from dashboard.config import ConfigError, DashboardConfig, current_config
from dashboard.models import Action, AuditEvent

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5  # seconds between writes of new log lines and checks for a cancel
HEARTBEAT_INTERVAL = 2.0  # seconds between heartbeats
MAX_LOG_CHARS = 1_000_000
DEFAULT_HEARTBEAT_LIMIT = 60.0
DEFAULT_RETENTION_DAYS = 30
DEFAULT_HOUSEKEEPING_INTERVAL = 30.0
CONFIG_VERB = "config.changed"


PR_SET_DUMPABLE = 4


def keep_memory_private() -> None:
    """Stop other processes of this user, Alembic's children among them, reading this one."""
    # The worker holds every environment's URL; /proc/<pid>/environ, /proc/<pid>/mem and
    # ptrace need a dumpable process. Its children exec, which makes them dumpable again.
    if sys.platform.startswith("linux"):
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0) != 0:
            logger.warning("could not make the worker undumpable")


def snapshot_retention_days() -> int:
    """Return how many days unchanged snapshots and finished task rows are kept."""
    return int(getattr(settings, "DASHBOARD_RETENTION_DAYS", DEFAULT_RETENTION_DAYS))


def heartbeat_limit() -> float:
    """Return the seconds of silence after which a running action counts as interrupted."""
    return float(getattr(settings, "DASHBOARD_HEARTBEAT_LIMIT", DEFAULT_HEARTBEAT_LIMIT))


def housekeeping_interval() -> float:
    """Return the seconds between housekeeping rounds."""
    return float(
        getattr(settings, "DASHBOARD_HOUSEKEEPING_INTERVAL", DEFAULT_HOUSEKEEPING_INTERVAL)
    )


class RunMonitor:
    """Stream a running action's output into its row, heartbeat it and watch for a cancel.

    Alembic's child must be started from the task's own thread (its parent-death signal
    follows that thread), so the database writes happen here, in a helper thread, batched.
    """

    def __init__(
        self,
        action_id: int,
        *,
        known_revisions: Collection[str],
        flush_interval: float = FLUSH_INTERVAL,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        give_up_after: float | None = None,
    ) -> None:
        self.action_id = action_id
        self.known_revisions = frozenset(known_revisions)
        self.flush_interval = flush_interval
        self.heartbeat_interval = heartbeat_interval
        # Stop the run before another worker may declare it interrupted and start the next.
        self.give_up_after = heartbeat_limit() * 0.8 if give_up_after is None else give_up_after
        self.cancel = threading.Event()
        # Set when the row stopped being "running" under us (housekeeping declared it interrupted).
        self.lost = threading.Event()
        self.steps = 0
        self._lines: list[str] = []
        self._written_steps = 0
        self._log_chars = 0
        self._truncated = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_heartbeat = time.monotonic()
        self._thread = threading.Thread(
            target=self._loop, name=f"action-{action_id}-monitor", daemon=True
        )

    def line(self, line: str) -> None:
        """Take one output line from the runner; count it when it announces a step."""
        step = runner.parse_progress(line, self.known_revisions)
        with self._lock:
            if step is not None:
                self.steps += 1
            if self._truncated:
                return
            if self._log_chars + len(line) > MAX_LOG_CHARS:
                self._truncated = True
                line = f"(log truncated after {MAX_LOG_CHARS} characters)"
            self._lines.append(line)
            self._log_chars += len(line) + 1

    def should_cancel(self) -> bool:
        """Say whether someone asked to cancel the action; the runner polls this."""
        return self.cancel.is_set()

    def start(self) -> None:
        """Start heartbeating and flushing in the helper thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the helper thread and write what is left."""
        self._stop.set()
        self._thread.join()
        self._flush(heartbeat=True)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.flush_interval):
                due = time.monotonic() - self._last_heartbeat >= self.heartbeat_interval
                self._flush(heartbeat=due)
                self._watch_for_cancel()
        finally:
            connection.close()  # this thread's own connection

    def _watch_for_cancel(self) -> None:
        if self.cancel.is_set():
            return
        try:
            wanted = Action.objects.filter(pk=self.action_id, cancel_requested=True).exists()
        except Exception:  # asked again at the next tick
            logger.exception("could not check action %s for a cancel request", self.action_id)
            return
        if wanted:
            self.cancel.set()

    def _flush(self, *, heartbeat: bool) -> None:
        with self._lock:
            lines = list(self._lines)
            steps = self.steps
        if not lines and steps == self._written_steps and not heartbeat:
            return
        changes: dict[str, Any] = {"progress_done": steps}
        if lines:
            text = "".join(f"{line}\n" for line in lines)
            changes["log"] = Concat(F("log"), Value(text), output_field=TextField())
        if heartbeat:
            changes["heartbeat_at"] = timezone.now()
        try:
            running = Action.objects.filter(pk=self.action_id, status=Action.Status.RUNNING)
            updated = running.update(**changes)
            if updated == 0 and not self.lost.is_set():
                # Our heartbeats stopped reaching the database for longer than the limit, so the
                # run was declared interrupted and another may start here: stop this one.
                logger.warning("action %s is no longer running in the database", self.action_id)
                self.lost.set()
                self.cancel.set()
            if heartbeat:
                self._last_heartbeat = time.monotonic()
        except Exception:
            # A database hiccup must not stop the run; the lines wait for the next try.
            logger.exception("could not record progress of action %s", self.action_id)
            silent = time.monotonic() - self._last_heartbeat
            if silent > self.give_up_after and not self.lost.is_set():
                logger.error(
                    "action %s: no heartbeat reached the database for %.0f s; stopping Alembic",
                    self.action_id,
                    silent,
                )
                self.lost.set()
                self.cancel.set()
            return
        with self._lock:
            del self._lines[: len(lines)]
        self._written_steps = steps


@dataclass(frozen=True)
class ConfigChanges:
    """Which projects and environments appeared, vanished or changed since the last record."""

    appeared: dict[str, list[str]] = field(default_factory=dict)
    vanished: dict[str, list[str]] = field(default_factory=dict)
    changed: dict[str, list[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(
            names
            for group in (self.appeared, self.vanished, self.changed)
            for names in group.values()
        )


def config_digests(config: DashboardConfig) -> dict[str, dict[str, str]]:
    """Return a digest of each project's and environment's settings, never of a URL."""
    projects = {name: _digest(asdict(project)) for name, project in config.projects.items()}
    environments = {}
    for name, env in config.environments.items():
        values = asdict(env)
        values["url"] = env.url is not None  # whether it is inline, not what it is
        environments[name] = _digest(values)
    return {"projects": projects, "environments": environments}


def _digest(values: dict[str, Any]) -> str:
    text = json.dumps(values, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_changes_record(config: DashboardConfig | None = None) -> AuditEvent | None:
    """Record a config.changed event if the config differs from the last one recorded."""
    config = config or current_config()
    current = config_digests(config)
    last = AuditEvent.objects.filter(verb=CONFIG_VERB).order_by("-id").first()
    previous = (last.payload.get("digests") if last else None) or {}
    changes = ConfigChanges()
    for kind in ("projects", "environments"):
        before: dict[str, str] = previous.get(kind) or {}
        now = current[kind]
        changes.appeared[kind] = sorted(set(now) - set(before))
        changes.vanished[kind] = sorted(set(before) - set(now))
        changes.changed[kind] = sorted(n for n in set(now) & set(before) if now[n] != before[n])
    if not changes:
        return None
    return audit.record(
        CONFIG_VERB,
        actor_name=audit.SYSTEM,
        payload={
            "config": str(config.path),
            "appeared": changes.appeared,
            "vanished": changes.vanished,
            "changed": changes.changed,
            "digests": current,
        },
    )


@dataclass
class HousekeepingReport:
    """What one round of housekeeping did."""

    interrupted: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    config_recorded: bool = False
    pruned: int = 0
    problems: list[str] = field(default_factory=list)


class Housekeeping:
    """One round of the worker's chores: interrupted runs, lost queue entries, config changes."""

    def __init__(self, *, limit: float | None = None) -> None:
        self.limit = heartbeat_limit() if limit is None else limit

    def run_once(self) -> HousekeepingReport:
        """Do every chore once; a failing chore is logged and does not stop the others."""
        from dashboard.services import actions

        report = HousekeepingReport()
        try:
            report.interrupted = [a.pk for a in actions.action_interrupt_silent(limit=self.limit)]
        except Exception as exc:  # the next round tries again
            logger.exception("could not check for interrupted actions")
            report.problems.append(f"interrupted actions: {exc}")
        try:
            report.requeued = actions.action_requeue_lost()
        except Exception as exc:
            logger.exception("could not check the queue for lost actions")
            report.problems.append(f"lost queue entries: {exc}")
        try:
            report.config_recorded = config_changes_record() is not None
        except ConfigError as exc:
            report.problems.append(f"config: {exc}")
        try:
            report.pruned = self._prune()
        except Exception as exc:
            logger.exception("could not prune old snapshots and task results")
            report.problems.append(f"pruning: {exc}")
        return report

    def _prune(self) -> int:
        """Delete unchanged snapshots and finished task results past the retention period."""
        from django.core.management import call_command

        from dashboard.services import status

        days = snapshot_retention_days()
        pruned = status.snapshots_prune(older_than=timedelta(days=days))
        # The periodic refresh and housekeeping leave a finished task row every minute.
        call_command("prune_db_task_results", min_age_days=days, verbosity=0)
        return pruned

    def start_up(self) -> HousekeepingReport:
        """Do the chores, then schedule the periodic status refresh and housekeeping."""
        report = self.run_once()
        try:
            from dashboard.services import status

            status.schedule_periodic_refresh()
        except Exception as exc:
            logger.exception("could not schedule the periodic status refresh")
            report.problems.append(f"status refresh: {exc}")
        schedule_housekeeping(delay=housekeeping_interval())
        return report


def schedule_housekeeping(*, delay: float = 0.0) -> bool:
    """Enqueue housekeeping to run after `delay` seconds unless a round is already waiting."""
    from django_tasks_db.backend import DatabaseBackend
    from django_tasks_db.models import DBTaskResult

    from dashboard.tasks import keep_house

    if not isinstance(keep_house.get_backend(), DatabaseBackend):
        return False
    waiting = DBTaskResult.objects.filter(
        task_path=keep_house.module_path, status=TaskResultStatus.READY
    )
    if waiting.exists():
        return False
    result = keep_house.using(run_after=timezone.now() + timedelta(seconds=delay)).enqueue()
    # Two workers starting together can both find none waiting: keep the earliest only.
    ids = [
        str(pk)
        for pk in waiting.order_by("run_after", "enqueued_at", "id").values_list("id", flat=True)
    ]
    if len(ids) > 1:
        waiting.filter(id__in=ids[1:]).delete()
    return bool(ids) and ids[0] == str(result.id)
