"""The worker's periodic housekeeping: interrupted runs, lost queue entries, config changes."""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import sys
import threading
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django.utils.crypto import salted_hmac

from dashboard import audit
from dashboard.config import (
    ConfigError,
    DashboardConfig,
    Environment,
    NotConfigured,
    Project,
    current_config,
    url_identity,
)
from dashboard.models import AuditEvent
from dashboard.runner import bundle
from dashboard.runner.monitor import heartbeat_limit
from dashboard.services import queue, workers

logger = logging.getLogger(__name__)

DEFAULT_RETENTION_DAYS = 30
DEFAULT_HOUSEKEEPING_INTERVAL = 30.0
MAX_BEAT_INTERVAL = 10.0  # seconds between a worker's beats, at most
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


def housekeeping_interval() -> float:
    """Return the seconds between housekeeping rounds."""
    return float(
        getattr(settings, "DASHBOARD_HOUSEKEEPING_INTERVAL", DEFAULT_HOUSEKEEPING_INTERVAL)
    )


@dataclass(frozen=True)
class ConfigChanges:
    """Which projects and environments appeared, vanished or changed since the last record."""

    appeared: dict[str, list[str]] = field(default_factory=dict)
    vanished: dict[str, list[str]] = field(default_factory=dict)
    changed: dict[str, list[str]] = field(default_factory=dict)
    # Environments whose database is another one: another host, port, database, user or options.
    database_changed: list[str] = field(default_factory=list)
    # Environments whose database digest cannot be compared with the last record's.
    database_rekeyed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.database_rekeyed) or any(
            names
            for group in (self.appeared, self.vanished, self.changed)
            for names in group.values()
        )


def config_digests(config: DashboardConfig) -> dict[str, dict[str, str]]:
    """Return a digest of each project's and environment's settings, and a keyed one of its URL."""
    projects = {}
    for name, project in config.projects.items():
        values = asdict(project)
        values["scratch_url"] = project.scratch_url is not None  # "scratch" below says where
        projects[name] = _digest(values)
    environments = {}
    for name, env in config.environments.items():
        values = asdict(env)
        values["url"] = env.url is not None  # whether it is inline, not what it is
        del values["url_error"]  # the database digest covers it
        environments[name] = _digest(values)
    databases = {name: database_digest(env) for name, env in config.environments.items()}
    # Where each project's scratch server is: a moved one is a changed project.
    scratch = {name: scratch_digest(project) for name, project in config.projects.items()}
    return {
        "projects": projects,
        "environments": environments,
        "databases": databases,
        "scratch": scratch,
    }


def _digest(values: dict[str, Any]) -> str:
    text = json.dumps(values, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


DATABASE_DIGEST_SALT = "dashboard.worker.database_digest"


def database_digest(env: Environment) -> str:
    """Return "key id:digest", keyed by SECRET_KEY, of the database the worker would connect to."""
    try:
        # For url_env, the variable as this process sees it: a repointed variable is a repoint.
        identity = url_identity(env.database_url())
    except NotConfigured as exc:
        identity = str(exc)  # unset or unusable, which is a change too
    # Without the password: a rotated password is the same database, not a repoint. Keyed, so
    # the trail cannot confirm a guessed host or database name.
    return _keyed(identity)


def scratch_digest(project: Project) -> str:
    """Return "key id:digest", keyed by SECRET_KEY, of the scratch server the worker would use."""
    try:
        # For scratch_url_env, the variable as this process sees it, like database_digest.
        url = project.scratch_database_url()
        identity = "none" if url is None else url_identity(url)
    except NotConfigured as exc:
        identity = str(exc)
    return _keyed(identity)


def _keyed(identity: str) -> str:
    key_id = salted_hmac(DATABASE_DIGEST_SALT, "key id", algorithm="sha256").hexdigest()[:8]
    digest = salted_hmac(DATABASE_DIGEST_SALT, identity, algorithm="sha256").hexdigest()[:16]
    return f"{key_id}:{digest}"


def config_changes_record(config: DashboardConfig | None = None) -> AuditEvent | None:
    """Record a config.changed event if the config differs from this worker's last record."""
    config = config or current_config()
    current = config_digests(config)
    reporter = workers.worker_name()
    # Workers may see different url_env values or install paths; comparing with another
    # worker's record would flip-flop forever. A new worker starts from the latest record.
    events = AuditEvent.objects.filter(verb=CONFIG_VERB).order_by("-id")
    last = events.filter(payload__worker=reporter).first() or events.first()
    previous = (last.payload.get("digests") if last else None) or {}
    changes = ConfigChanges()
    for kind in ("projects", "environments"):
        before: dict[str, str] = previous.get(kind) or {}
        now = current[kind]
        changes.appeared[kind] = sorted(set(now) - set(before))
        changes.vanished[kind] = sorted(set(before) - set(now))
        changes.changed[kind] = sorted(n for n in set(now) & set(before) if now[n] != before[n])
    before_db: dict[str, str] = previous.get("databases") or {}
    for name in sorted(set(current["environments"]) & set(previous.get("environments") or {})):
        old_key, _, old = before_db.get(name, "").partition(":")
        new_key, _, new = current["databases"][name].partition(":")
        if old_key != new_key:  # a new SECRET_KEY, or a record from before database digests
            changes.database_rekeyed.append(name)
        elif old != new:
            changes.database_changed.append(name)
    changes.changed["environments"] = sorted(
        {*changes.changed["environments"], *changes.database_changed}
    )
    before_scratch: dict[str, str] = previous.get("scratch") or {}
    moved = []
    for name in sorted(set(current["projects"]) & set(previous.get("projects") or {})):
        old_key, _, old = before_scratch.get(name, "").partition(":")
        new_key, _, new = current["scratch"][name].partition(":")
        # Another SECRET_KEY, or a record from before scratch digests, cannot be compared.
        if old_key == new_key and old != new:
            moved.append(name)
    changes.changed["projects"] = sorted({*changes.changed["projects"], *moved})
    if not changes:
        return None
    return audit.record(
        CONFIG_VERB,
        actor_name=audit.SYSTEM,
        payload={
            "config": str(config.path),
            "worker": reporter,
            "appeared": changes.appeared,
            "vanished": changes.vanished,
            "changed": changes.changed,
            "database_changed": changes.database_changed,
            "database_rekeyed": changes.database_rekeyed,
            "digests": current,
        },
    )


@dataclass
class HousekeepingReport:
    """What one round of housekeeping did."""

    interrupted: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)  # scheduled actions whose window opened
    superseded: list[int] = field(default_factory=list)  # open requests whose plan no longer holds
    config_recorded: bool = False
    pruned: int = 0
    swept_copies: int = 0  # private copies of approved files no unfinished action needs
    swept_files: int = 0  # stored approved files past their retention
    swept_scratch: list[str] = field(default_factory=list)  # scratch databases dead workers left
    abandoned_checks: list[int] = field(default_factory=list)  # pending checks no worker finished
    advanced_rollouts: list[int] = field(default_factory=list)  # running rollouts looked at
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
            from dashboard.services.actions import scheduling

            # Deferred runs start them on time; this catches one whose deferred run was lost.
            report.released = scheduling.actions_release_due()
        except Exception as exc:
            logger.exception("could not release the scheduled actions")
            report.problems.append(f"scheduled actions: {exc}")
        try:
            report.superseded = [a.pk for a in actions.actions_supersede_stale()]
        except Exception as exc:
            logger.exception("could not check open requests for plans that no longer hold")
            report.problems.append(f"superseded requests: {exc}")
        try:
            from dashboard.services import rollouts

            # After the interrupted runs above: their slots are free for the next members.
            report.advanced_rollouts = rollouts.rollouts_advance_running()
        except Exception as exc:
            logger.exception("could not advance the running rollouts")
            report.problems.append(f"rollouts: {exc}")
        try:
            report.config_recorded = config_changes_record() is not None
        except ConfigError as exc:
            report.problems.append(f"config: {exc}")
        try:
            report.pruned = self._prune()
        except Exception as exc:
            logger.exception("could not prune old snapshots and task results")
            report.problems.append(f"pruning: {exc}")
        try:
            from dashboard.services import drift

            report.abandoned_checks = drift.schema_checks_abandon()
        except Exception as exc:
            logger.exception("could not check for abandoned schema checks")
            report.problems.append(f"schema checks: {exc}")
        try:
            report.swept_copies, report.swept_files = self._sweep_approved()
        except Exception as exc:
            logger.exception("could not sweep the approved files")
            report.problems.append(f"approved files: {exc}")
        return report

    def _prune(self) -> int:
        """Delete unchanged snapshots and finished task results past the retention period."""
        from django.core.management import call_command

        from dashboard.services import drift, status

        days = snapshot_retention_days()
        pruned = status.snapshots_prune(older_than=timedelta(days=days))
        pruned += drift.schema_checks_prune(older_than=timedelta(days=days))
        # The periodic refresh and housekeeping leave a finished task row every minute.
        call_command("prune_db_task_results", min_age_days=days, verbosity=0)
        return pruned

    def _sweep_approved(self) -> tuple[int, int]:
        """Remove copies of finished actions (a killed worker's too) and bytes past retention."""
        retention = timedelta(days=snapshot_retention_days())
        copies, files = bundle.approved_sweep(retention=retention)
        return len(copies), files

    def start_up(self) -> HousekeepingReport:
        """Do the chores, then schedule the periodic refresh, checks, discovery and housekeeping."""
        from dashboard.runner.process import _sweep_config_folders

        report = self.run_once()
        try:
            # A SIGKILLed worker leaves its runs' 0600 configs, plaintext URLs and all, behind.
            _sweep_config_folders()
        except Exception as exc:  # every run sweeps again before it starts
            logger.exception("could not sweep the config folders of dead workers")
            report.problems.append(f"config folders: {exc}")
        try:
            from dashboard.services import status

            status.schedule_periodic_refresh()
        except Exception as exc:
            logger.exception("could not schedule the periodic status refresh")
            report.problems.append(f"status refresh: {exc}")
        try:
            from dashboard.services import drift

            # A worker killed mid-replay leaves its scratch database behind.
            report.swept_scratch = drift.scratch_sweep()
            # Not at once: a worker starting with approved actions waiting runs those first.
            drift.schedule_periodic_checks(delay=drift.PERIODIC_TICK)
        except Exception as exc:
            logger.exception("could not sweep scratch databases or schedule schema checks")
            report.problems.append(f"schema checks: {exc}")
        try:
            from dashboard.services import fleets

            # At once: a fleet whose members a query finds has none until its first look.
            fleets.schedule_periodic_discovery()
        except Exception as exc:
            logger.exception("could not schedule the discovery of fleet members")
            report.problems.append(f"fleet discovery: {exc}")
        try:
            from dashboard.services import history_checks

            # Not at once, like schema checks: waiting approved actions go first.
            history_checks.schedule_periodic_history_checks(delay=history_checks.TICK)
        except Exception as exc:
            logger.exception("could not schedule the checks that Alembic loads each history")
            report.problems.append(f"history checks: {exc}")
        schedule_housekeeping(delay=housekeeping_interval())
        return report


def schedule_housekeeping(*, delay: float = 0.0) -> bool:
    """Enqueue housekeeping to run after `delay` seconds unless a round is already waiting."""
    return queue.schedule_once("keep_house", delay=delay)


def beat_interval(limit: float | None = None) -> float:
    """Return the seconds between a worker's beats: four of them fit in the heartbeat limit."""
    limit = heartbeat_limit() if limit is None else limit
    return min(MAX_BEAT_INTERVAL, limit / 4)


class WorkerBeats:
    """Record this worker's beat from a helper thread, whatever task the main thread runs."""

    def __init__(self, *, name: str | None = None, interval: float | None = None) -> None:
        self.name = name or workers.worker_name()
        self.interval = beat_interval() if interval is None else interval
        self.started_at = timezone.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-beats", daemon=True)

    def start(self) -> None:
        """Sweep the beats of long-dead workers, beat once, then keep beating in the thread."""
        try:
            workers.worker_beats_prune()
        except Exception:  # swept at the next start
            logger.exception("could not sweep old worker beats")
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove this worker's beat, so nobody waits for it."""
        self._stop.set()
        if self._thread.is_alive():
            # A beat stuck on a locked database would otherwise write the row back afterwards.
            self._thread.join(timeout=30)
        try:
            workers.worker_beat_remove(name=self.name)
        except Exception:  # the beat ages and pages call the worker silent
            logger.exception("could not remove the beat of worker %s", self.name)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self._beat()
        finally:
            connection.close()  # this thread's own connection

    def _beat(self) -> None:
        try:
            workers.worker_beat_record(name=self.name, started_at=self.started_at)
        except Exception:  # tried again at the next beat; pages call the worker silent meanwhile
            logger.exception("could not record the beat of worker %s", self.name)
