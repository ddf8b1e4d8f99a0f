"""Check environments' schemas against their reference, store the result, audit changes."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from django.db import transaction
from django.utils import timezone

from dashboard import audit
from dashboard.config import (
    ConfigError,
    DashboardConfig,
    Environment,
    NotConfigured,
    Project,
    current_config,
)
from dashboard.databases import schema, scratch, versions
from dashboard.drift import adoption, reference
from dashboard.drift.differences import Difference
from dashboard.models import SchemaCheck
from dashboard.runner import bundle
from dashboard.runner.process import replay_secrets
from dashboard.services import queue
from dashboard.services.status import ProjectHistory, project_history

logger = logging.getLogger(__name__)

SYSTEM = "worker"
MAX_PARALLEL = 8  # live reads at once; each is bounded by its environment's schema_timeout
PERIODIC_TICK = 60.0  # seconds between the worker's looks for environments whose check is due
# A pending check older than this lost its worker: a replay is capped by replay_time_limit
# (600 s by default), and an adoption match may replay a few dozen times.
PENDING_LIMIT = timedelta(hours=1)
# A pending check this old whose task is neither queued nor running will never finish: its
# task died (the worker was stopped mid-run) or never was (enqueued after commit, at once).
ORPHAN_GRACE = timedelta(minutes=1)
State = SchemaCheck.State
CONCLUSIVE = (State.DRIFT, State.IN_SYNC)  # checks that say what the schema is


class UnknownEnvironment(Exception):
    """No environment of that name is configured."""


@dataclass
class _Job:
    """One environment's check as it goes: what is known so far, and the outcome."""

    env: Environment
    project: Project
    check: SchemaCheck
    url: str = ""
    heads: tuple[str, ...] = ()
    ref: reference.Reference | None = None
    state: str = ""
    reason: str = ""
    differences: list[Difference] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    adoption: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def stop(self, state: str, reason: str) -> None:
        self.state, self.reason = state, reason


def schema_check_request(*, environment: str, user: Any, request: Any = None) -> SchemaCheck:
    """Ask a worker to check an environment's schema now; the page polls the returned row."""
    config = current_config()
    env = config.environments.get(environment)
    if env is None:
        raise UnknownEnvironment(f"unknown environment {environment!r}")
    schema_checks_abandon()
    waiting = SchemaCheck.objects.filter(environment=environment, state=State.PENDING).first()
    if waiting is not None:
        return waiting  # one request is enough; both people see its result
    with transaction.atomic():
        check = SchemaCheck.objects.create(
            environment=environment,
            project=env.project,
            trigger=SchemaCheck.Trigger.DEMAND,
            requested_by=user.get_username(),
        )
        audit.record(
            "schema.check_requested",
            actor=user,
            request=request,
            environment=environment,
            payload={"check": check.pk},
        )
        transaction.on_commit(lambda: enqueue_check(check.pk))
    return check


def enqueue_check(check_id: int) -> None:
    """Hand a pending check to the task queue."""
    queue.task_named("check_schema").enqueue(check_id)


def schema_check_after_action(*, environment: str) -> None:
    """Queue a check of an environment whose schema an action may have changed."""
    config = current_config()
    env = config.environments.get(environment)
    if env is None:
        return
    check = SchemaCheck.objects.create(
        environment=environment, project=env.project, trigger=SchemaCheck.Trigger.ACTION
    )
    transaction.on_commit(lambda: enqueue_check(check.pk))


def schema_check_run(*, check_id: int) -> SchemaCheck:
    """Run a pending check (from the queue); a finished one is returned as it is.

    A run that raises (the environment left the config, the config broke, the worker was
    stopped) fails the row with why, so it does not block new requests.
    """
    check = SchemaCheck.objects.get(pk=check_id)
    if check.is_finished:
        return check
    try:
        return schemas_check([check.environment], trigger=check.trigger, pending=[check])[0]
    except UnknownEnvironment:
        schema_check_fail(check_id, f"environment {check.environment} is no longer configured")
        raise
    except ConfigError as exc:
        schema_check_fail(check_id, f"the config cannot be read: {exc}")
        raise
    except (SystemExit, KeyboardInterrupt):
        schema_check_fail(check_id, "the worker was stopped during this check")
        raise
    except BaseException as exc:
        schema_check_fail(
            check_id, f"the check failed unexpectedly ({type(exc).__name__}); see the worker's log"
        )
        raise


def schema_check_fail(check_id: int, reason: str) -> bool:
    """Fail a check that is still pending, with reason; say whether it was pending."""
    return bool(
        SchemaCheck.objects.filter(pk=check_id, state=State.PENDING).update(
            state=State.FAILED, reason=reason, checked_at=timezone.now()
        )
    )


def schemas_check(
    names: Sequence[str] | None = None,
    *,
    trigger: str = SchemaCheck.Trigger.COMMAND,
    requested_by: str = "",
    pending: Sequence[SchemaCheck] = (),
    config: DashboardConfig | None = None,
) -> list[SchemaCheck]:
    """Check the named environments (all when None) now; store and return one row each.

    References are built once per distinct key, in this thread; live schemas are read in
    parallel; one broken environment never stops the others.
    """
    config = config or current_config()
    if names is None:
        names = [env.name for env in config.ordered_environments()]
    unknown = [name for name in names if name not in config.environments]
    if unknown:
        raise UnknownEnvironment(f"unknown environment {unknown[0]!r}")
    given = {check.environment: check for check in pending}
    jobs = []
    for name in names:
        env = config.environments[name]
        check = given.get(name) or SchemaCheck(
            environment=name, project=env.project, trigger=trigger, requested_by=requested_by
        )
        jobs.append(_Job(env=env, project=config.projects[env.project], check=check))
    _read_heads(jobs)
    seen = _Seen()
    for job in jobs:
        if not job.state:
            _reference(job, config, seen)
    live = [job for job in jobs if not job.state]
    if live:
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(live))) as pool:
            list(pool.map(_compare, live))
    for job in jobs:
        # No heads but tables (a missing or an empty version table, which a stamp may fill).
        if job.state in (State.DRIFT, State.IN_SYNC) and not job.heads and job.tables:
            job.adoption = _adoption(job, config)
    return [_store(job) for job in jobs]


def _read_heads(jobs: Sequence[_Job]) -> None:
    readings = versions.read_many([(job.env, job.project) for job in jobs])
    for job, reading in zip(jobs, readings, strict=True):
        try:
            job.url = job.env.database_url()
        except NotConfigured as exc:
            job.stop(State.NOT_CHECKED, str(exc))
            continue
        if not reading.ok:
            job.stop(State.FAILED, f"cannot read the version table: {reading.error}")
            continue
        job.heads = reading.heads


# A reference that failed is not retried within one call (100 environments at a revision whose
# replay breaks cost one failed replay); the next call tries again.
@dataclass
class _Seen:
    """What one call read, or failed to build, already: the same for every environment."""

    histories: dict[str, ProjectHistory] = field(default_factory=dict)
    bundles: dict[str, bundle.Bundle | bundle.BundleError] = field(default_factory=dict)
    failures: dict[tuple[reference.Key, bool], tuple[str, str]] = field(default_factory=dict)
    # References built with `alembic check` in this call: it runs once per key and call.
    modelled: dict[reference.Key, reference.Reference] = field(default_factory=dict)

    def history(self, project: Project) -> ProjectHistory:
        if project.name not in self.histories:
            self.histories[project.name] = project_history(project)
        return self.histories[project.name]

    def bundle(self, project: Project) -> bundle.Bundle:
        if project.name not in self.bundles:
            try:
                self.bundles[project.name] = bundle.bundle_read(project)
            except bundle.BundleError as exc:
                self.bundles[project.name] = exc
        found = self.bundles[project.name]
        if isinstance(found, bundle.BundleError):
            raise found
        return found


def _reference(job: _Job, config: DashboardConfig, seen: _Seen) -> None:
    history = seen.history(job.project)
    if history.graph is None:
        job.stop(State.FAILED, f"the script directory cannot be read: {history.error}")
        return
    unknown = [head for head in job.heads if head not in history.graph]
    if unknown:
        job.stop(
            State.NOT_CHECKED,
            f"head {unknown[0]} is not in the script directory, so no reference exists for it",
        )
        return
    try:
        found = seen.bundle(job.project)
    except bundle.BundleError as exc:
        job.stop(State.FAILED, f"the reference schema could not be built: {exc}")
        return
    job.check.fingerprint = found.digest
    backend = scratch.backend_of(job.url)
    at_heads = bool(job.heads) and set(job.heads) == set(history.graph.heads)
    with_models = job.project.check_models and at_heads
    key = reference.key_for(job.project, found, job.heads, backend)
    slot = (key, with_models)
    if slot in seen.failures:
        job.stop(*seen.failures[slot])
        return
    if with_models and key in seen.modelled:
        job.ref, job.check.replayed = seen.modelled[key], False
        return
    try:
        job.ref, job.check.replayed = reference.reference_for(
            job.project,
            found,
            job.heads,
            backend,
            with_models=with_models,
            drop_env=replay_secrets(config),
        )
    except reference.ReferenceUnavailable as exc:
        job.stop(State.NOT_CHECKED, str(exc))
    except (reference.ReferenceFailed, bundle.BundleError) as exc:
        job.stop(State.FAILED, f"the reference schema could not be built: {exc}")
    if job.state:
        seen.failures[slot] = (job.state, job.reason)
    elif with_models and job.ref is not None:
        seen.modelled[key] = job.ref


def _compare(job: _Job) -> None:
    metadata = job.ref.metadata if job.ref is not None else None
    try:
        found = schema.compare_live(
            job.url,
            metadata if metadata is not None else sa.MetaData(),
            version_table=job.project.version_table,
            version_table_schema=job.project.version_table_schema,
            timeout=job.env.timeout,
            deadline=job.env.schema_timeout,
        )
    except schema.SchemaReadError as exc:
        job.stop(State.FAILED, f"cannot read the live schema: {exc}")
        return
    except Exception:  # one environment's surprise never takes the others down
        logger.exception("schema comparison of %s failed", job.env.name)
        job.stop(State.FAILED, "the comparison failed unexpectedly; the worker's log has details")
        return
    job.differences, job.tables = found.differences, found.tables
    job.state = State.DRIFT if found.differences else State.IN_SYNC


def _adoption(job: _Job, config: DashboardConfig) -> dict[str, Any]:
    history = project_history(job.project)
    if history.graph is None:
        return {"error": f"the script directory cannot be read: {history.error}"}
    try:
        return adoption.match(
            job.project, job.url, job.env, history.graph, drop_env=replay_secrets(config)
        )
    except reference.ReferenceUnavailable as exc:  # e.g. no scratch server: say so
        return {"error": versions.mask_secrets(str(exc), _secrets(job))}
    except (reference.ReferenceFailed, schema.SchemaReadError, bundle.BundleError) as exc:
        reason = f"the candidates' references could not be built or compared: {exc}"
        return {"error": versions.mask_secrets(reason, _secrets(job))}
    except Exception as exc:  # adoption is advice: its failure must not fail the check
        logger.exception("adoption match of %s failed", job.env.name)
        return {"error": type(exc).__name__}


def _store(job: _Job) -> SchemaCheck:
    check = job.check
    secrets = _secrets(job)
    # The last conclusive check: a failed or unchecked one in between says nothing new, so
    # drift -> failed -> drift is not drift found twice.
    previous = (
        SchemaCheck.objects.filter(environment=job.env.name, state__in=CONCLUSIVE)
        .exclude(pk=check.pk)
        .order_by("-checked_at", "-id")
        .first()
    )
    check.state = job.state
    check.reason = versions.mask_secrets(job.reason, secrets)
    check.heads = list(job.heads)
    check.differences = [d.as_dict() for d in job.differences]
    check.live_schema = {"tables": job.tables} if job.tables else {}
    check.adoption = job.adoption
    models = job.ref.models if job.ref is not None else None
    if models is not None:
        check.models_state = models.state
        check.models_differences = models.operations
        check.models_reason = versions.mask_secrets(models.reason, secrets)
    check.checked_at = timezone.now()
    check.duration_ms = schema.elapsed_ms(job.started)
    with transaction.atomic():
        check.save()
        _audit_change(previous, check)
    return check


def _secrets(job: _Job) -> list[str]:
    found: list[str] = []
    for url in (job.url, _scratch_url(job.project)):
        if url:
            try:
                found += versions.url_secrets(versions.parse_database_url(url))
            except ValueError:
                continue
    return found


def _scratch_url(project: Project) -> str | None:
    try:
        return project.scratch_database_url()
    except NotConfigured:
        return None


def _audit_change(previous: SchemaCheck | None, check: SchemaCheck) -> None:
    """Record drift found, changed and resolved; steady states and failed checks are silent."""
    before = previous.state if previous is not None else None
    now = check.state
    payload = {
        "check": check.pk,
        "heads": check.heads,
        "differences": len(check.differences),
        "items": [f"{d['kind']} {d['table']}.{d['name']}" for d in check.differences][:50],
    }
    if now == State.DRIFT and before != State.DRIFT:
        verb = "schema.drift_found"
    elif now == State.DRIFT and previous is not None and previous.differences != check.differences:
        verb = "schema.drift_changed"
    elif now == State.IN_SYNC and before == State.DRIFT:
        verb = "schema.drift_resolved"
    else:
        return
    audit.record(verb, actor_name=SYSTEM, environment=check.environment, payload=payload)


def due_environments(config: DashboardConfig | None = None) -> list[str]:
    """Return the environments whose periodic check is due (interval 0 means never)."""
    config = config or current_config()
    now = timezone.now()
    due = []
    for env in config.ordered_environments():
        if env.schema_check_interval <= 0:
            continue
        last = (
            SchemaCheck.objects.filter(environment=env.name)
            .exclude(state=State.PENDING)
            .order_by("-checked_at")
            .values_list("checked_at", flat=True)
            .first()
        )
        if last is None or now - last >= timedelta(seconds=env.schema_check_interval):
            due.append(env.name)
    return due


def schemas_check_due() -> int:
    """Check every environment whose periodic check is due; return how many were checked."""
    names = due_environments()
    if names:
        schemas_check(names, trigger=SchemaCheck.Trigger.PERIODIC)
    return len(names)


def schema_checks_prune(*, older_than: timedelta) -> int:
    """Delete finished checks past the retention, keeping each environment's latest finished
    and latest conclusive check (the pages show both)."""
    cutoff = timezone.now() - older_than
    keep: set[int] = set()
    seen: set[tuple[str, bool]] = set()
    rows = (
        SchemaCheck.objects.exclude(state=State.PENDING)
        .order_by("environment", "-checked_at", "-id")
        .values_list("environment", "id", "state")
    )
    for environment, pk, state in rows.iterator():
        for slot in ((environment, False), (environment, True)):
            conclusive_slot = slot[1]
            if slot in seen or (conclusive_slot and state not in CONCLUSIVE):
                continue
            seen.add(slot)
            keep.add(pk)
    old = SchemaCheck.objects.filter(created_at__lt=cutoff).exclude(state=State.PENDING)
    return old.exclude(id__in=keep).delete()[0]


def schema_checks_abandon(
    *, limit: timedelta = PENDING_LIMIT, grace: timedelta = ORPHAN_GRACE
) -> list[int]:
    """Fail the pending checks no worker will finish: older than limit (it died, or none
    runs), or older than grace with no queued or running task (the task died, or failed)."""
    now = timezone.now()
    pending = SchemaCheck.objects.filter(state=State.PENDING)
    stale = list(pending.filter(created_at__lt=now - limit).values_list("pk", flat=True))
    if stale:
        minutes = int(limit.total_seconds() // 60)
        SchemaCheck.objects.filter(pk__in=stale, state=State.PENDING).update(
            state=State.FAILED,
            reason=f"no worker finished this check within {minutes} min (did the worker die?)",
            checked_at=now,
        )
    # Young ones may still be in their requester's transaction, their task not yet queued.
    settled = pending.filter(created_at__lt=now - grace).exclude(pk__in=stale)
    candidates = list(settled.values_list("pk", flat=True))
    queued = _queued_checks() if candidates else set()
    orphans = [pk for pk in candidates if queued is not None and pk not in queued]
    if orphans:
        SchemaCheck.objects.filter(pk__in=orphans, state=State.PENDING).update(
            state=State.FAILED,
            reason="this check's task is no longer queued nor running (did the worker stop?)",
            checked_at=now,
        )
    return stale + orphans


def _queued_checks() -> set[int] | None:
    """Return the checks a queued or running check_schema task will run (None: cannot tell)."""
    from django.tasks import TaskResultStatus
    from django_tasks_db.backend import DatabaseBackend
    from django_tasks_db.models import DBTaskResult

    task = queue.task_named("check_schema")
    if not isinstance(task.get_backend(), DatabaseBackend):
        return None
    alive = DBTaskResult.objects.filter(
        task_path=task.module_path,
        status__in=[TaskResultStatus.READY, TaskResultStatus.RUNNING],
    )
    found: set[int] = set()
    for args_kwargs in alive.values_list("args_kwargs", flat=True):
        args = args_kwargs.get("args") or []
        if args and isinstance(args[0], int):
            found.add(args[0])
    return found


def scratch_sweep(config: DashboardConfig | None = None) -> list[str]:
    """Drop scratch databases dead workers of this host left, on every configured server."""
    config = config or current_config()
    dropped: list[str] = scratch.sweep(None)
    servers = {url for project in config.projects.values() if (url := _scratch_url(project))}
    for url in sorted(servers):
        try:
            dropped += scratch.sweep(url)
        except scratch.ScratchError as exc:
            logger.warning("could not sweep scratch databases: %s", exc)
    return dropped


def schedule_periodic_checks(*, delay: float = 0.0) -> bool:
    """Enqueue the periodic look for due schema checks unless one waits; say if this did."""
    return queue.schedule_once("check_schemas_periodically", delay=delay)
