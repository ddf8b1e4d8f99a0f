"""Run queued actions one per environment, and look after runs whose worker went away."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from dashboard import audit, runner, scripts
from dashboard.config import (
    BadDatabaseURL,
    ConfigError,
    DashboardConfig,
    Environment,
    NotConfigured,
    Project,
    current_config,
    parse_database_url,
    render_duration,
)
from dashboard.databases import blockers, indexes, runlock, sessions, versions
from dashboard.models import Action, Approval, RevisionRun
from dashboard.runner import bundle, process, review
from dashboard.runner.monitor import RunMonitor
from dashboard.runner.process import child_secrets
from dashboard.services import holding, queue, runtimes, superseding
from dashboard.services.actions import attempts, pinning, rollout_gate, scheduling
from dashboard.services.actions.errors import SCRIPT_CHANGED
from dashboard.services.actions.lookups import locked_action_or_refuse

logger = logging.getLogger(__name__)

RETRY_DELAY = 1.0  # seconds before a queued action whose environment is busy tries again
LONG_WAIT_RETRY_DELAY = 5.0  # ... once it has waited longer than LONG_WAIT
LONG_WAIT = timedelta(seconds=30)
PREPARE_GRACE = timedelta(minutes=2)  # a request's SQL may take this long before it counts as lost
PREPARE_LIMIT = timedelta(
    seconds=review.OFFLINE_SQL_TIMEOUT + review.SQUAWK_TIMEOUT + 60
)  # a preparation still "running" after this lost its worker
_ERROR_LINE = re.compile(r"^(FAILED:|[A-Za-z_][\w.]*(Error|Exception|Exit)\b)")


def action_run(*, action_id: int, worker: str) -> Action:
    """Run a queued action now, unless its environment is busy or an older one waits first.

    Returns the action: still queued when it must wait (the caller retries later),
    finished otherwise. A stale plan fails without running anything.
    """
    action, claimed = _claim(action_id, worker)
    if not claimed:
        return action
    try:
        return _run_claimed(action)
    except Exception as exc:
        # Never leave the action "running" with nobody behind it.
        leftover = _stop_leftover_sessions(action)
        after_heads = _heads_now(action)
        _finish(
            action,
            Action.Status.FAILED,
            error=f"the run broke off ({type(exc).__name__}: {exc}); "
            + where(action.environment, action.from_heads, after_heads, action.target_heads)
            + leftover,
            after_heads=after_heads,
        )
        raise
    except BaseException:
        # The worker is being stopped (a second SIGTERM, Ctrl-C): Alembic was killed with it,
        # not the statement it had sent.
        leftover = _stop_leftover_sessions(action)
        after_heads = _heads_now(action)
        _finish(
            action,
            Action.Status.INTERRUPTED,
            error="the worker was stopped while running it; "
            + where(action.environment, action.from_heads, after_heads, action.target_heads)
            + leftover,
            after_heads=after_heads,
        )
        raise


def action_interrupt_silent(*, limit: float) -> list[Action]:
    """Mark running actions whose heartbeat is older than limit seconds as interrupted."""
    interrupted = []
    cutoff = timezone.now() - timedelta(seconds=limit)
    for action in Action.objects.silent_since(cutoff):
        try:
            current = _interrupt(action, cutoff, limit)
        except Exception:  # one action's trouble must not shield the others
            logger.exception("could not mark action %s interrupted", action.pk)
            continue
        if current is not None:
            interrupted.append(current)
            _refresh_status(current.environment)
            _check_schema_after(current.environment)
    return interrupted


def _interrupt(action: Action, cutoff: datetime, limit: float) -> Action | None:
    """Mark one silent action interrupted unless it finished or heartbeat meanwhile."""
    if not Action.objects.silent_since(cutoff).filter(pk=action.pk).exists():
        return None
    # Marking it frees the environment, while the dead worker's last statement may still run
    # in the server, holding its locks: stop that first.
    leftover = _stop_leftover_sessions(action)
    after_heads = _heads_now(action)
    with transaction.atomic():
        current = Action.objects.select_for_update().filter(pk=action.pk).first()
        if current is None or not Action.objects.silent_since(cutoff).filter(pk=action.pk).exists():
            return None  # it finished or heartbeat meanwhile
        last = current.heartbeat_at or current.started_at
        error = (
            f"the worker {current.worker or '(unknown)'} stopped heartbeating"
            f" at {last:%Y-%m-%d %H:%M:%S} UTC (limit {limit:g} s);"
            f" {where(current.environment, current.from_heads, after_heads, current.target_heads)}"
            f"{leftover}"
        )
        current.status = Action.Status.INTERRUPTED
        current.finished_at = timezone.now()
        current.after_heads = after_heads
        current.error = error
        current.save(update_fields=["status", "finished_at", "after_heads", "error"])
        audit.record(
            "action.interrupted",
            actor_name=audit.SYSTEM,
            environment=current.environment,
            action_id=current.pk,
            payload={
                "worker": current.worker,
                "last_heartbeat": last.isoformat() if last else None,
                "after_heads": after_heads,
                "error": error,
            },
        )
    return current


def action_requeue_lost() -> list[int]:
    """Enqueue again the runs (and SQL preparations) whose queue entry is gone or failed.

    Returns the ids of the actions handed to the queue again.
    """
    from django.tasks import TaskResultStatus
    from django_tasks_db.backend import DatabaseBackend
    from django_tasks_db.models import DBTaskResult

    prepare_action = queue.task_named("prepare_action")
    run_action = queue.task_named("run_action")
    if not isinstance(run_action.get_backend(), DatabaseBackend):
        return []
    alive = DBTaskResult.objects.filter(
        status__in=[TaskResultStatus.READY, TaskResultStatus.RUNNING]
    )
    running_ids = {
        str(pk)
        for pk in alive.filter(task_path=run_action.module_path).values_list("id", flat=True)
    }
    # Followers wait approved, off the queue (never counted lost); one whose ahead succeeded
    # without its ending queuing it is queued now, and enqueued below as a lost run.
    superseding.actions_release_behind()
    lost_runs = [
        pk
        for pk, task_id in Action.objects.queued().values_list("pk", "task_id")
        if _normal_id(task_id) not in running_ids
    ]
    for pk in lost_runs:
        enqueue_run(pk)
    # A preparation runs two bounded subprocesses; one "running" far longer lost its worker
    # (django-tasks-db leaves a killed worker's row as it was).
    overdue = timezone.now() - PREPARE_LIMIT
    preparing = {
        args_kwargs["args"][0]
        for args_kwargs in alive.filter(task_path=prepare_action.module_path)
        .exclude(status=TaskResultStatus.RUNNING, started_at__lt=overdue)
        .values_list("args_kwargs", flat=True)
        if args_kwargs.get("args")
    }
    # Young requests may still be in their requester's transaction or the CLI's hands.
    settled = timezone.now() - PREPARE_GRACE
    lost_preparations = [
        pk
        for pk in Action.objects.awaiting_approval()
        .filter(prepared_at__isnull=True, created_at__lt=settled)
        .values_list("pk", flat=True)
        if pk not in preparing
    ]
    for pk in lost_preparations:
        prepare_action.enqueue(pk)
    return lost_runs + lost_preparations


def enqueue_run(action_id: int, *, delay: float = 0.0) -> None:
    """Put the action's run on the task queue (after delay seconds) and remember the task id."""
    run_action = queue.task_named("run_action")
    task = run_action
    if delay > 0:
        task = run_action.using(run_after=timezone.now() + timedelta(seconds=delay))
    result = task.enqueue(action_id)
    Action.objects.filter(pk=action_id).update(task_id=str(result.id))


def retry_delay(action: Action) -> float:
    """Return how long a queued action waits before trying its busy environment again."""
    queued_at = action.queued_at or action.created_at
    waited = timezone.now() - queued_at
    return LONG_WAIT_RETRY_DELAY if waited > LONG_WAIT else RETRY_DELAY


def heads_text(heads: Sequence[str] | None) -> str:
    """Return heads as people read them: ids joined by commas, or base."""
    if heads is None:
        return "(unknown)"
    return ", ".join(heads) if heads else "base"


def where(
    environment: str,
    from_heads: Sequence[str],
    after_heads: Sequence[str] | None,
    target_heads: Sequence[str],
) -> str:
    """Say where the environment ended up compared with where it was and where it was going."""
    if after_heads is None:
        return f"{environment}'s heads could not be read afterwards"
    after = set(after_heads)
    if after == set(target_heads):
        return f"{environment} is at {heads_text(after_heads)}"
    if after == set(from_heads):
        return f"{environment} is still at {heads_text(after_heads)}: nothing stayed applied"
    return (
        f"{environment} is now at {heads_text(after_heads)}, partly applied"
        f" (it was at {heads_text(from_heads)}; the plan ends at {heads_text(target_heads)})"
    )


def _claim(action_id: int, worker: str) -> tuple[Action, bool]:
    """Move the action from queued to running unless its environment is busy or has an elder."""
    with transaction.atomic():
        action = locked_action_or_refuse(action_id)
        if action.status == Action.Status.SCHEDULED:
            if not scheduling.action_release(action):
                return action, False  # its window (or run-at time) has not come yet
        elif action.status != Action.Status.QUEUED:
            return action, False
        elif scheduling.action_hold(action):
            return action, False  # outside a window: back to scheduled, for the next opening
        if not rollout_gate.member_may_start(action):
            return action, False  # its rollout was paused or cancelled since it was queued
        same_environment = Action.objects.filter(environment=action.environment)
        if same_environment.running().exists():
            return action, False
        # Actions of one environment run in the order they were requested.
        if same_environment.queued().filter(pk__lt=action.pk).exists():
            return action, False
        # Queued behind another: its plan starts where that one ends, so only after it succeeded.
        ahead = action.queued_behind
        if ahead is not None and ahead.status != Action.Status.SUCCEEDED:
            if not ahead.is_finished:
                return action, False
            reason = holding.plan_problem(action, ahead=ahead)
            return superseding.action_supersede(action_id=action.pk, reason=reason) or action, False
        now = timezone.now()
        try:
            with transaction.atomic():
                # The partial unique index, not the check above, has the last word.
                Action.objects.filter(pk=action.pk, status=Action.Status.QUEUED).update(
                    status=Action.Status.RUNNING,
                    started_at=now,
                    heartbeat_at=now,
                    worker=worker,
                    progress_done=0,
                )
        except IntegrityError:
            return action, False
        action.refresh_from_db()
        audit.record(
            "action.started",
            actor_name=audit.SYSTEM,
            environment=action.environment,
            action_id=action.pk,
            payload={"worker": worker, "from_heads": action.from_heads, "plan": action.plan},
        )
    return action, True


def _run_claimed(action: Action) -> Action:
    """Check the plan still holds, run the approved copy, and record what the environment says."""
    with contextlib.ExitStack() as held:
        finished = _run_checked(action, held)
    # Its copy is of no further use unless another unfinished action has the same bytes.
    try:
        bundle.copies_sweep_unneeded()
    except Exception:  # housekeeping sweeps what this leaves
        logger.exception("could not sweep the approved copies after action %s", action.pk)
    return finished


def _run_checked(action: Action, held: contextlib.ExitStack) -> Action:
    """Run _run_claimed's checks and Alembic; the approved copy stays held until held closes."""
    unapproved = _approval_problem(action)
    if unapproved:
        return _finish(action, Action.Status.FAILED, error=f"{unapproved}; nothing ran")
    try:
        config = current_config()
    except ConfigError as exc:
        return _finish(action, Action.Status.FAILED, error=f"the config cannot be read: {exc}")
    env = config.environments.get(action.environment)
    if env is None or env.project != action.project:
        return _finish(
            action,
            Action.Status.FAILED,
            error=f"environment {action.environment} is no longer configured; nothing ran",
        )
    project = config.projects[env.project]
    try:
        url = env.database_url()
    except NotConfigured as exc:
        return _finish(action, Action.Status.FAILED, error=f"{exc}; nothing ran")
    try:
        live = bundle.bundle_read(project)
    except (scripts.ScriptLocationError, OSError, bundle.BundleError) as exc:
        return _finish(
            action, Action.Status.FAILED, error=f"cannot read project {project.name}: {exc}"
        )
    # A courtesy: what runs is the approved copy either way, but a project edited since the
    # request no longer matches what its operator meant.
    if live.digest != action.fingerprint:
        return _finish(
            action,
            Action.Status.FAILED,
            error=f"{SCRIPT_CHANGED} ({_changed_text(action.bundle, live.manifest)}); nothing ran",
        )
    try:
        # Verified here, just before the start; Alembic reads nothing of the live folder's.
        copy = held.enter_context(
            bundle.approved_copy(manifest=action.bundle, digest=action.fingerprint)
        )
    except bundle.BundleError as exc:
        return _finish(action, Action.Status.FAILED, error=f"{exc}; nothing ran")
    known = set(action.plan) | set(action.from_heads) | set(action.target_heads)
    waiting = attempts.LockWait(env.name)
    # Started before the run lock is waited for: it heartbeats the wait, sees a cancel and
    # shows what stands in the way from the first moment.
    monitor = RunMonitor(action.pk, known_revisions=known)
    # Also the look at the run lock: it runs in the monitor's thread, which may cancel the run.
    monitor.watch = _watch(action, env, url, waiting, monitor)
    monitor.start()
    try:
        ending = _run_locked(
            _Run(action, config, env, project, url, copy, monitor, waiting), waiting
        )
    except BaseException as exc:
        monitor.stop()
        broke = Action.Status.FAILED if isinstance(exc, Exception) else Action.Status.INTERRUPTED
        runtimes.runtimes_record(action, monitor.take_attempt(), runtimes.outcome_of(broke))
        raise
    monitor.stop()
    if ending is not None and ending.hold is not None:
        return _put_back(action, ending.hold, ending.error)
    runtimes.runtimes_record(
        action,
        monitor.take_attempt(),
        runtimes.outcome_of(ending.status if ending else Action.Status.INTERRUPTED),
    )
    if ending is None:
        # The checks took longer than the heartbeat limit and it was declared interrupted.
        action.refresh_from_db()
        return action
    return _finish(
        action,
        ending.status,
        error=ending.error,
        after_heads=ending.after_heads,
        progress=ending.progress,
        duration_s=ending.duration_s,
        invalid_indexes=ending.invalid_indexes,
    )


@dataclass(frozen=True)
class _Run:
    """What one claimed action's run works with."""

    action: Action
    config: DashboardConfig
    env: Environment
    project: Project
    url: str
    copy: process.ApprovedCopy
    monitor: RunMonitor
    waiting: attempts.LockWait


@dataclass(frozen=True)
class _Ending:
    """How a run ended, for _finish."""

    status: str
    error: str = ""
    after_heads: list[str] | None = None
    progress: int | None = None
    duration_s: float | None = None
    invalid_indexes: list[dict[str, Any]] | None = None
    # Set when its window closed before Alembic (re)started: it goes back to scheduled.
    hold: scheduling.Hold | None = None


def _watch(
    action: Action, env: Environment, url: str, waiting: attempts.LockWait, monitor: RunMonitor
) -> Callable[[], list[dict[str, Any]]] | None:
    """Return the look the monitor takes every second: is the run lock still ours, who is in the way."""
    backend = _backend(url)
    if backend not in ("postgresql", "mysql", "mariadb"):
        return None  # SQLite: one writer at a time, nobody to name
    tag = sessions.action_tag(action.pk)
    tables = blockers.tables_in_sql(action.sql or "") if backend == "postgresql" else []

    def look() -> list[dict[str, Any]]:
        # A DBA or a server's idle limit may end the lock's connection: another run could start.
        waiting.check_held(monitor)
        found = []
        if backend == "postgresql":
            found = blockers.in_the_way(url, tag=tag, tables=tables, timeout=env.timeout)
        return waiting.shown(found)

    return look


def _run_locked(run: _Run, waiting: attempts.LockWait) -> _Ending | None:
    """Hold the environment's run lock (waiting for it if need be) and run the plan under it."""
    env = run.env
    try:
        with runlock.hold(
            run.url,
            run.project,
            wait=env.run_lock_wait,
            timeout=env.timeout,
            on_wait=functools.partial(waiting.seen, run.monitor),
        ) as lock:
            waiting.taken(run.monitor)
            waiting.held = lock
            try:
                return _run_held(run, waited=waiting.waited, locked=lock is not None)
            finally:
                waiting.held = None
    except runlock.RunLockBusy as exc:
        return _Ending(
            Action.Status.FAILED,
            f"another run holds the run lock of {env.name} ({runlock.describe(exc.holder)});"
            f" waited {env.run_lock_wait:g} s; nothing ran",
        )
    except runlock.RunLockError as exc:
        return _Ending(
            Action.Status.FAILED, f"cannot take the run lock of {env.name}: {exc}; nothing ran"
        )
    except attempts.StopWaiting:
        return _stopped(run, "while waiting for the run lock; nothing ran")


def _run_held(run: _Run, *, waited: bool, locked: bool) -> _Ending | None:
    """Check the plan still holds now that nobody else may run, then run it, retrying if need be."""
    action, env, project, monitor = run.action, run.env, run.project, run.monitor
    if closed := _window_closed(run, "after its wait for the run lock (nothing ran)"):
        return closed
    before = versions.read_environment(env, project)
    if not before.ok:
        return _Ending(
            Action.Status.FAILED,
            f"cannot read {env.name} before the run: {before.error}; nothing ran",
        )
    if set(before.heads) != set(action.from_heads):
        during = " while this run waited for the run lock" if waited else ""
        return _Ending(
            Action.Status.FAILED,
            f"stale plan: {env.name} moved from {heads_text(action.from_heads)}"
            f" to {heads_text(before.heads)}{during}; nothing ran",
            after_heads=list(before.heads),
        )
    if action.direction == Action.Direction.STAMP and (
        unlike := _stamp_table_moved(action, project, before.table_exists)
    ):
        return _Ending(
            Action.Status.FAILED,
            f"stale plan: {env.name}'s {unlike}; nothing ran",
            after_heads=list(before.heads),
        )
    if not Action.objects.filter(pk=action.pk, status=Action.Status.RUNNING).exists():
        return None
    backend = _backend(run.url)
    limits, notes = attempts.run_limits(env, action)
    tries = 1 + (env.lock_retries if backend == "postgresql" else 0)
    unbounded = sessions.unbounded_reason(run.url)
    if unbounded:
        monitor.line(f"dashboard: no lock limits apply to this run: {unbounded}")
    elif backend in ("postgresql", "mysql", "mariadb"):
        retried = f", up to {tries - 1} retries after a lock timeout" if tries > 1 else ""
        monitor.line(f"dashboard: {attempts.limits_text(limits)}{retried}")
    for note in notes if not unbounded else []:
        monitor.line(f"dashboard: {note}")
    child_env = limits.environ()
    if locked:
        child_env[runlock.HELD_VARIABLE] = runlock.HELD_VALUE
    ending = _run_attempts(run, limits, tries, child_env, backend)
    if unbounded and ending.status != Action.Status.SUCCEEDED:
        ending = dataclasses.replace(
            ending, error=f"{ending.error}; no lock limits applied to this run: {unbounded}"
        )
    if ending.status == Action.Status.SUCCEEDED or backend != "postgresql":
        return ending
    # A failed CREATE INDEX CONCURRENTLY leaves its index behind, invalid: say so on the action.
    invalid = indexes.invalid_indexes(run.url, timeout=env.timeout)
    if not invalid:
        return ending
    named = ", ".join(f"{item['index']} on {item['table']}" for item in invalid[:3])
    more = f" and {len(invalid) - 3} more" if len(invalid) > 3 else ""
    return dataclasses.replace(
        ending,
        error=f"{ending.error}; invalid indexes left behind: {named}{more}",
        invalid_indexes=invalid,
    )


def _run_attempts(
    run: _Run, limits: sessions.Limits, tries: int, child_env: dict[str, str], backend: str
) -> _Ending:
    """Run Alembic, again after each lock timeout that rolled everything back, up to tries times."""
    action, env, project, monitor = run.action, run.env, run.project, run.monitor
    started = time.monotonic()
    deadline = started + env.time_limit
    attempt = 1
    while True:
        try:
            result = runner.run_alembic(
                project,
                run.url,
                _alembic_arguments(action),
                on_line=monitor.line,
                time_limit=max(0.1, deadline - time.monotonic()),
                should_cancel=monitor.should_cancel,
                extra_env=child_env,
                drop_env=child_secrets(run.config, env),
                session_tag=sessions.action_tag(action.pk),
                approved=run.copy,
            )
            monitor.child_exited()
        except runner.RunnerError as exc:
            return _Ending(
                Action.Status.FAILED,
                f"Alembic could not be run: {exc}",
                after_heads=_heads_now(action, run.config),
            )
        leftover = ""
        if not result.succeeded:
            # Alembic was stopped, or died on its own (the OOM killer, a crash), not the
            # statement it had sent: the server runs it on, locks held, unless it is stopped.
            leftover = _stop_leftover_sessions(action, run.url, env.timeout)
        after = versions.read_environment(env, project)
        after_heads = list(after.heads) if after.ok else None
        place = where(env.name, action.from_heads, after_heads, action.target_heads)
        if not after.ok:
            place = f"{place} ({after.error})"
        action.refresh_from_db(fields=["cancel_requested_by"])
        if result.succeeded or result.cancelled or result.timed_out:
            break
        if not sessions.lock_timed_out(run.url, result.output_tail):
            break
        in_the_way = _in_the_way(run)
        monitor.set_blockers(in_the_way)
        refusal = attempts.no_retry_reason(
            backend=backend, action=action, after_heads=after_heads, leftover=leftover
        )
        delay = attempts.backoff(attempt)
        if not refusal and attempt < tries and deadline - time.monotonic() <= delay:
            refusal = f"not retried: the time limit of {env.time_limit:g} s leaves no time"
        if refusal or attempt >= tries:
            ending = _lock_timeout_ending(
                run, result, f"{attempt} of {tries}", limits, in_the_way, refusal, after_heads
            )
            return dataclasses.replace(ending, error=ending.error + leftover)
        monitor.line(
            f"lock timeout on attempt {attempt} of {tries}; retrying in {delay:.1f} s"
            + (f" (in the way: {attempts.describe_in_the_way(in_the_way)})" if in_the_way else "")
        )
        _record_retry(action, attempt, tries, delay, limits, in_the_way)
        runtimes.runtimes_record(action, monitor.take_attempt(), RevisionRun.Outcome.RETRIED)
        if attempts.sleep_unless(delay, monitor.should_cancel):
            return _stopped(run, f"while waiting to retry; {place}", after_heads=after_heads)
        again = versions.read_environment(env, project)
        if not again.ok or set(again.heads) != set(action.from_heads):
            moved = f"moved to {heads_text(again.heads)}" if again.ok else again.error
            return _Ending(
                Action.Status.FAILED,
                f"stale plan: before attempt {attempt + 1}, {env.name} {moved};"
                f" not retried; {place}",
                after_heads=list(again.heads) if again.ok else after_heads,
                progress=0,
            )
        if closed := _window_closed(run, f"after a lock timeout, before its retry ({place})"):
            return closed
        attempt += 1
        monitor.steps = 0  # the next attempt announces its steps afresh
    if run.waiting.lost.is_set() and not result.succeeded:
        return _Ending(
            Action.Status.FAILED,
            run.waiting.lost_text(f"; {place}") + leftover,
            after_heads=after_heads,
            progress=monitor.steps,
        )
    status, error = _outcome(action, env, result, monitor, after_heads, place)
    if status == Action.Status.SUCCEEDED:
        return _Ending(
            status,
            after_heads=after_heads,
            progress=len(action.plan),
            duration_s=time.monotonic() - started,
        )
    return _Ending(status, error + leftover, after_heads=after_heads, progress=monitor.steps)


def _lock_timeout_ending(
    run: _Run,
    result: runner.RunResult,
    attempt: str,
    limits: sessions.Limits,
    in_the_way: list[dict[str, Any]],
    refusal: str,
    after_heads: list[str] | None,
) -> _Ending:
    """Fail a run a lock timeout ended that is not tried again, saying what was in the way."""
    action, env = run.action, run.env
    cause = _error_line(result.output_tail)
    parts = [f"alembic exited with status {result.returncode}" + (f" ({cause})" if cause else "")]
    parts.append(
        f"a statement waited longer than lock_timeout {render_duration(limits.lock_timeout)}"
        f" on attempt {attempt}"
    )
    if in_the_way:
        parts.append(f"in the way: {attempts.describe_in_the_way(in_the_way)}")
    if refusal:
        parts.append(refusal)
    parts.append(where(env.name, action.from_heads, after_heads, action.target_heads))
    return _Ending(
        Action.Status.FAILED,
        "; ".join(parts),
        after_heads=after_heads,
        progress=run.monitor.steps,
    )


def _stopped(run: _Run, when: str, *, after_heads: list[str] | None = None) -> _Ending:
    """End a run that was cancelled, or lost its heartbeat, between attempts."""
    run.action.refresh_from_db(fields=["cancel_requested_by"])
    if run.waiting.lost.is_set():
        return _Ending(
            Action.Status.FAILED, run.waiting.lost_text(f" {when}"), after_heads=after_heads
        )
    if run.monitor.lost.is_set():
        return _Ending(
            Action.Status.INTERRUPTED,
            f"stopped: its heartbeats did not reach the dashboard's database in time {when}",
            after_heads=after_heads,
        )
    who = run.action.cancel_requested_by or "someone"
    return _Ending(Action.Status.CANCELLED, f"cancelled by {who} {when}", after_heads=after_heads)


def _window_closed(run: _Run, when: str) -> _Ending | None:
    """End a run whose windows no longer let it start (the claim checked them before a wait)."""
    hold = scheduling.hold_for(run.action, run.env)
    if hold is None:
        return None
    return _Ending(Action.Status.SCHEDULED, f"its windows no longer let it start {when}", hold=hold)


def _put_back(action: Action, hold: scheduling.Hold, why: str) -> Action:
    """Put a run its window closed on back to scheduled; a cancel asked for meanwhile ends it."""
    put_back = scheduling.action_put_back(action, hold, why=why)
    action.refresh_from_db()
    if put_back or action.status != Action.Status.RUNNING:
        return action  # scheduled again, or declared interrupted meanwhile (its ending)
    who = action.cancel_requested_by or "someone"
    return _finish(action, Action.Status.CANCELLED, error=f"cancelled by {who}; {why}")


def _record_retry(
    action: Action,
    attempt: int,
    tries: int,
    delay: float,
    limits: sessions.Limits,
    in_the_way: list[dict[str, Any]],
) -> None:
    """Count and audit one retry of the run after a lock timeout rolled it back."""
    Action.objects.filter(pk=action.pk).update(retries=F("retries") + 1)
    audit.record(
        "action.retried",
        actor_name=audit.SYSTEM,
        environment=action.environment,
        action_id=action.pk,
        payload={
            "attempt": attempt,
            "of": tries,
            "delay_s": round(delay, 1),
            "reason": "lock timeout",
            "lock_timeout_ms": limits.lock_timeout_ms,
            "in_the_way": [item.get("pid") for item in in_the_way],
        },
    )


def _in_the_way(run: _Run) -> list[dict[str, Any]]:
    """List the sessions in the way of the plan's tables now (PostgreSQL; [] elsewhere)."""
    return blockers.in_the_way(
        run.url,
        tag=sessions.action_tag(run.action.pk),
        tables=blockers.tables_in_sql(run.action.sql or ""),
        timeout=run.env.timeout,
    )


def _backend(url: str) -> str:
    try:
        return parse_database_url(url).get_backend_name()
    except BadDatabaseURL:
        return ""


def _alembic_arguments(action: Action) -> list[str]:
    """Return what Alembic is told to do: exactly the approved plan's end, by id."""
    if action.direction == Action.Direction.STAMP:
        # Every revision the stamp writes, by id, as its SQL was rendered.
        return process.stamp_arguments(action.target_heads)
    # The plan's end by id, as its SQL was rendered: a symbolic target ("heads", "+2")
    # means whatever the files say at start, the id only what was approved.
    return [
        action.direction,
        review.plan_end(target=action.target, target_heads=action.target_heads),
    ]


def _stamp_table_moved(action: Action, project: Project, table_exists: bool) -> str:
    """Say how the version table changed since a stamp's SQL was rendered, or return ""."""
    # The approved SQL creates the table exactly when it was missing then; online, Alembic
    # creates it only when it is missing now: the two must agree for the SQL to be what runs.
    created = review.stamp_creates_version_table(action.sql, project.version_table)
    if created and table_exists:
        return (
            f"version table {project.version_table} was created since the stamp's SQL was"
            " made (which creates it)"
        )
    if not created and not table_exists:
        return (
            f"version table {project.version_table} was dropped since the stamp's SQL was made"
            " (which writes into it)"
        )
    return ""


def _approval_problem(action: Action) -> str:
    """Say why the stored action is not the plan its approvers vouched for, or return ""."""
    # Recomputed from the fields the run uses: a row edited after the approval (its files,
    # its plan, its end) no longer hashes to what the approvers saw.
    expected = pinning.action_plan_hash(action)
    approving = list(
        action.approvals.filter(decision=Approval.Decision.APPROVE).values_list(
            "plan_hash", flat=True
        )
    )
    if expected != action.plan_hash or any(seen != expected for seen in approving):
        return "the action's plan no longer matches what was approved"
    if len(approving) < action.approvals_required:
        return (
            f"the action has {len(approving)} of the {action.approvals_required} approvals it needs"
        )
    if review.note_says_failed(action.sql_note):
        # Queued before such actions were failed at preparation: nobody saw what would run.
        return action.sql_note
    return ""


def _outcome(
    action: Action,
    env: Environment,
    result: runner.RunResult,
    monitor: RunMonitor,
    after_heads: list[str] | None,
    place: str,
) -> tuple[str, str]:
    """Decide how a finished run ended: its status and the error that explains it."""
    if result.cancelled and monitor.lost.is_set():
        return (
            Action.Status.INTERRUPTED,
            f"stopped: its heartbeats did not reach the dashboard's database in time; {place}",
        )
    if result.cancelled:
        who = action.cancel_requested_by or "someone"
        return Action.Status.CANCELLED, f"cancelled by {who} while running; {place}"
    if result.timed_out:
        return Action.Status.FAILED, f"stopped at the time limit of {env.time_limit:g} s; {place}"
    if result.returncode != 0:
        cause = _error_line(result.output_tail)
        detail = f" ({cause})" if cause else ""
        return (
            Action.Status.FAILED,
            f"alembic exited with status {result.returncode}{detail}; {place}",
        )
    if after_heads is None or set(after_heads) != set(action.target_heads):
        expected = heads_text(action.target_heads)
        return Action.Status.FAILED, f"alembic exited 0 but {place}, not at {expected}"
    return Action.Status.SUCCEEDED, ""


def _finish(
    action: Action,
    status: str,
    *,
    error: str = "",
    after_heads: list[str] | None = None,
    progress: int | None = None,
    duration_s: float | None = None,
    invalid_indexes: list[dict[str, Any]] | None = None,
) -> Action:
    """Record how a running action ended, audit it, and refresh the environment's snapshot."""
    changes: dict[str, Any] = {
        "status": status,
        "finished_at": timezone.now(),
        "error": error,
        "after_heads": after_heads,
    }
    if progress is not None:
        changes["progress_done"] = progress
    if invalid_indexes:
        changes["invalid_indexes"] = invalid_indexes
    payload: dict[str, Any] = {"after_heads": after_heads, "worker": action.worker}
    if error:
        payload["error"] = error
    if duration_s is not None:
        payload["duration_s"] = round(duration_s, 3)
    with transaction.atomic():
        running = Action.objects.filter(pk=action.pk, status=Action.Status.RUNNING)
        if running.update(**changes):
            audit.record(
                f"action.{status}",
                actor_name=audit.SYSTEM,
                environment=action.environment,
                action_id=action.pk,
                payload=payload,
            )
        else:
            # Declared interrupted (or cancelled) under us: that stays its one ending, and
            # what the run did after all is recorded beside it, with where it left the heads.
            Action.objects.filter(pk=action.pk).update(after_heads=after_heads)
            audit.record(
                "action.late_outcome",
                actor_name=audit.SYSTEM,
                environment=action.environment,
                action_id=action.pk,
                payload={"outcome": status, **payload},
            )
    _supersede_after(action.pk)
    _start_next(action.environment)
    _refresh_status(action.environment)
    _check_schema_after(action.environment)
    action.refresh_from_db()
    return action


def _supersede_after(action_id: int) -> None:
    """Set aside the plans this ending made stale: others from the old heads, or those behind it."""
    try:
        superseding.actions_supersede_after(action_id=action_id)
    except Exception:  # housekeeping finds them too; the run's own record is complete
        logger.exception("could not supersede the plans action %s made stale", action_id)


def _start_next(environment: str) -> None:
    """Hand the environment's next queued action to the queue now instead of at its retry."""
    following = Action.objects.queued().filter(environment=environment).order_by("pk").first()
    if following is not None:
        try:
            enqueue_run(following.pk)
        except Exception:  # its own retry still comes
            logger.exception("could not enqueue action %s", following.pk)


def _heads_now(action: Action, config: DashboardConfig | None = None) -> list[str] | None:
    """Read the action's environment again; None when it cannot be read."""
    try:
        config = config or current_config()
        env = config.environments[action.environment]
        reading = versions.read_environment(env, config.projects[env.project])
    except Exception:  # called while recording a failure: it must not add one
        logger.exception("could not read %s again", action.environment)
        return None
    return list(reading.heads) if reading.ok else None


def _stop_leftover_sessions(
    action: Action, url: str | None = None, timeout: float | None = None
) -> str:
    """Stop the database sessions the action's Alembic left; return "; why some remain" or ""."""
    try:
        if url is None or timeout is None:
            env = current_config().environments[action.environment]
            url, timeout = env.database_url(), env.timeout
        report = sessions.stop_sessions(url, sessions.action_tag(action.pk), timeout=timeout)
    except Exception:  # called while recording an ending: it must not add one
        logger.exception("could not look for the database sessions of action %s", action.pk)
        return "; its database sessions could not be looked for"
    for failure in report.failures:
        logger.warning("action %s: %s", action.pk, failure)
    return "".join(f"; {failure}" for failure in report.failures)


def _changed_text(approved: dict[str, str], live: dict[str, str]) -> str:
    """Say which files differ from the approved bytes, naming a few."""
    names = bundle.changed_names(approved, live)
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"{', '.join(names[:3])}{more} differ from the approved bytes"


def _error_line(lines: Sequence[str]) -> str:
    """Return the line of Alembic's output that names the failure, if any."""
    for line in reversed(lines):
        text = line.strip()
        if _ERROR_LINE.match(text):
            return text[:300]
    return ""


def _normal_id(task_id: str) -> str:
    """Return a task id in the dashed form DBTaskResult ids are listed in."""
    try:
        return str(uuid.UUID(task_id))
    except ValueError:
        return task_id


def _refresh_status(environment: str) -> None:
    """Store a fresh snapshot of the environment so the overview shows the new revision."""
    try:
        from dashboard.services import status
    except ImportError:
        return
    refresh = getattr(status, "status_refresh", None)
    if refresh is None:
        return
    try:
        refresh(environments=[environment])
    except Exception:  # the snapshot is a convenience; the action's own record is complete
        logger.exception("could not refresh the status of %s", environment)


def _check_schema_after(environment: str) -> None:
    """Queue a schema check of an environment an action just ran on (or tried to)."""
    try:
        from dashboard.services import drift

        drift.schema_check_after_action(environment=environment)
    except Exception:  # the check is advice; the action's own record is complete
        logger.exception("could not queue a schema check of %s after an action", environment)
