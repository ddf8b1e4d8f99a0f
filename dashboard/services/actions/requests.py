"""Request an action: plan it from a fresh read of the environment, then prepare its SQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from dashboard import audit, history, roles, scripts
from dashboard.config import (
    ConfigError,
    DashboardConfig,
    Environment,
    NotConfigured,
    Project,
    current_config,
)
from dashboard.databases import versions
from dashboard.models import Action
from dashboard.runner import bundle, review
from dashboard.services import history_checks, queue, superseding
from dashboard.services.actions import pinning as plans
from dashboard.services.actions import queueing, scheduling
from dashboard.services.actions.decisions import queue_action
from dashboard.services.actions.errors import (
    ActionRefused,
    AmbiguousDowngrade,
    AmbiguousTarget,
    EnvironmentUnavailable,
    NotAllowed,
    NothingToDo,
    NotReachable,
    StampRefused,
    UnknownTarget,
)
from dashboard.services.actions.lookups import (
    action_or_refuse,
    config_or_refuse,
    environment_or_refuse,
    locked_action_or_refuse,
)
from dashboard.services.actions.runs import child_secrets, heads_text


def action_request(
    *,
    user: Any,
    environment: str,
    direction: str,
    target: str,
    reason: str = "",
    request: HttpRequest | None = None,
    prepare: bool = False,
    queue_behind: int | None = None,
    run_at: datetime | None = None,
) -> Action:
    """Plan an upgrade, downgrade or stamp from a fresh read of the environment; record it.

    prepare=True renders the offline SQL and its lint now (the command line); otherwise a
    worker task does it, because only the worker may run a project's code. queue_behind names
    the environment's last unfinished action: the plan then starts where that one ends, and
    runs only after it succeeded; without it, a request behind an unfinished one is refused.
    A stamp is only for an environment without version rows (see _refuse_stamp). run_at, inside
    one of the environment's windows, is the earliest the approved action starts.
    """
    if not roles.can_request(user):
        raise NotAllowed("only operators and admins may request actions")
    if direction not in Action.Direction.values:
        raise ActionRefused(f"direction must be upgrade, downgrade or stamp, not {direction!r}")
    stamp = direction == Action.Direction.STAMP
    if stamp and queue_behind is not None:
        raise StampRefused(
            "a stamp cannot be queued behind another action: it is planned from the version"
            " table as it is; request it once that action has finished"
        )
    target = target.strip()
    if not target:
        raise UnknownTarget(
            "name a target: a revision id or prefix, head, heads, base or label@head"
        )
    config = config_or_refuse()
    env, project = environment_or_refuse(config, environment)
    if run_at is not None and (problem := scheduling.run_at_problem(env, run_at)):
        raise ActionRefused(problem)
    try:
        loaded = plans.load_project_history(project, may_run_project_code=prepare)
    except plans.ProjectCodeNeeded as exc:
        raise ActionRefused(str(exc)) from exc
    except (scripts.ScriptLocationError, OSError) as exc:
        raise EnvironmentUnavailable(f"cannot read project {project.name}: {exc}") from exc
    # Read now, beside the history: the plan is bound to these bytes, and only they run; the
    # history comes back parsed from exactly them (the one loaded may be a stale cache's).
    try:
        loaded, approved = plans.current_bundle(project, loaded, may_run_project_code=prepare)
    except plans.ProjectCodeNeeded as exc:
        raise ActionRefused(str(exc)) from exc
    except (scripts.ScriptLocationError, OSError, bundle.BundleError) as exc:
        raise EnvironmentUnavailable(f"cannot read project {project.name}: {exc}") from exc
    # Alembic imports every file before it runs one: a syntax error anywhere stops it.
    broken = scripts.syntax_problems(loaded)
    if broken:
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        raise ActionRefused(
            f"Alembic cannot load project {project.name}'s history: {broken[0]}{more};"
            " nothing can be planned until it is fixed"
        )
    # Imports fail where parsing cannot tell: the worker's last check of these very files.
    if refused := history_checks.refusal(project=project.name, fingerprint=loaded.fingerprint):
        raise ActionRefused(refused)
    reading = versions.read_environment(env, project)
    if not reading.ok:
        raise EnvironmentUnavailable(f"cannot read {env.name} now: {reading.error}")
    if stamp:
        _refuse_stamp(env.name, reading.heads)
    unknown = [head for head in reading.heads if head not in loaded.graph]
    if unknown:
        raise EnvironmentUnavailable(
            f"{env.name} is at {', '.join(unknown)}, which project {project.name}'s script"
            " directory does not have; nothing can be planned from there"
        )
    start = queueing.request_start(
        environment=env.name,
        project=project,
        heads=reading.heads,
        read_at=reading.read_at,
        queue_behind=queue_behind,
    )
    if stamp:
        plan = _stamp_plan(loaded.graph, start.heads, target)
        if not plan.target_heads:
            raise NothingToDo(
                f"nothing to do: {env.name} has no version rows, and stamp {target} would"
                " write none"
            )
    else:
        plan = _plan(loaded.graph, start.heads, target, direction, env.name)
    if not plan.steps and not stamp:
        where = (
            f"will be at {heads_text(start.heads)} after #{start.ahead.pk}"
            if start.ahead
            else f"is at {heads_text(start.heads)}"
        )
        raise NothingToDo(
            f"nothing to do: {env.name} {where}, and {direction} {target} would run no revision"
        )
    start.refuse_if_conflicting()
    revisions = plan.revisions
    fingerprint = approved.digest
    # Read statically from the approved bytes: how each revision runs (outside a transaction,
    # with its own limits), for the plan's pages and the run.
    try:
        marks = plans.plan_marks(
            loaded, approved, revisions, direction, parsed_here=project.loader != "alembic"
        )
    except plans.MarksUnreadable as exc:
        raise ActionRefused(f"{exc}; nothing can be planned until it is fixed") from exc
    with transaction.atomic():
        # Checked again in turn: another request may have been recorded since the check above.
        queueing.request_hold(environment=env.name, heads=reading.heads, queue_behind=queue_behind)
        bundle.bundle_store(approved)
        action = Action.objects.create(
            environment=env.name,
            project=project.name,
            direction=direction,
            target=target,
            target_heads=list(plan.target_heads),
            from_heads=list(start.heads),
            queued_behind=start.ahead,
            plan=revisions,
            plan_marks=marks,
            fingerprint=fingerprint,
            bundle=approved.manifest,
            plan_hash=plans.plan_hash(
                environment=env.name,
                direction=direction,
                target=target,
                from_heads=start.heads,
                plan=revisions,
                sql_sha256="",
                fingerprint=fingerprint,
                target_heads=plan.target_heads,
                plan_marks=marks,
            ),
            approvals_required=env.approvals_for(direction),
            requested_by=user if getattr(user, "pk", None) else None,
            requested_by_name=user.get_username(),
            reason=reason.strip(),
            progress_total=len(revisions),
            run_at=run_at,
        )
        audit.record(
            "action.requested",
            actor=user,
            request=request,
            environment=env.name,
            action_id=action.pk,
            payload={
                "direction": direction,
                "target": target,
                "from_heads": list(start.heads),
                "queued_behind": start.ahead.pk if start.ahead else None,
                "plan": revisions,
                **({"plan_marks": marks} if marks else {}),
                "target_heads": list(plan.target_heads),
                # The digest of every approved file's sha256 (the action's bundle).
                "fingerprint": fingerprint,
                "approvals_required": action.approvals_required,
                "reason": action.reason,
                **({"run_at": run_at.isoformat()} if run_at is not None else {}),
                # Whether the stamp's SQL must create the version table, as read now.
                **({"version_table_exists": reading.table_exists} if stamp else {}),
            },
        )
        if not prepare:
            action_id = action.pk
            transaction.on_commit(lambda: _enqueue_prepare(action_id))
    if prepare:
        return action_prepare(action_id=action.pk)
    return action


def action_prepare(*, action_id: int) -> Action:
    """Render the plan's offline SQL and lint, fix its plan hash; queue it if none must approve.

    When the SQL could not be produced, nobody can approve it; one that needs no approval fails.
    """
    action = action_or_refuse(action_id)
    if action.is_prepared or action.status != Action.Status.REQUESTED:
        return action
    prepared = _prepare_sql(action)
    with transaction.atomic():
        action = locked_action_or_refuse(action_id)
        if action.is_prepared or action.status != Action.Status.REQUESTED:
            return action
        action.sql = prepared.sql
        action.sql_sha256 = prepared.sql_sha256
        action.sql_note = prepared.note
        action.lint = prepared.lint
        action.prepared_at = timezone.now()
        action.plan_hash = _plan_hash_of(action)
        action.save(
            update_fields=["sql", "sql_sha256", "sql_note", "lint", "prepared_at", "plan_hash"]
        )
        audit.record(
            "action.prepared",
            actor_name=audit.SYSTEM,
            environment=action.environment,
            action_id=action.pk,
            payload={
                "plan_hash": action.plan_hash,
                "sql_sha256": action.sql_sha256,
                "sql_note": action.sql_note,
                "sql_failed": prepared.failed,
                "lint_warnings": sum(1 for item in action.lint if item.get("line") is not None),
            },
        )
        if action.approvals_required == 0 and prepared.failed:
            # Nobody reviews it, so the SQL is the only look anyone had at the plan: without
            # it, what would run is unseen.
            _fail_unrun(action, f"{prepared.note}; nothing ran")
        elif action.approvals_required == 0:
            audit.record(
                "action.approved",
                actor_name=audit.SYSTEM,
                environment=action.environment,
                action_id=action.pk,
                payload={"plan_hash": action.plan_hash, "approvals": 0, "required": 0},
            )
            queue_action(action)
    if action.status == Action.Status.FAILED:
        superseding.actions_supersede_after(action_id=action.pk)  # the ones queued behind it
    return action


def _fail_unrun(action: Action, error: str) -> None:
    """Fail a requested action that never started, and audit it."""
    action.status = Action.Status.FAILED
    action.finished_at = timezone.now()
    action.error = error
    action.save(update_fields=["status", "finished_at", "error"])
    audit.record(
        "action.failed",
        actor_name=audit.SYSTEM,
        environment=action.environment,
        action_id=action.pk,
        payload={"error": error, "after_heads": None, "worker": ""},
    )


def _plan(
    graph: history.Graph, heads: Sequence[str], target: str, direction: str, environment: str
) -> plans.Plan:
    way: history.Direction = "downgrade" if direction == "downgrade" else "upgrade"
    try:
        return plans.make_plan(graph, heads, target, way)
    except history.AmbiguousDowngrade as exc:
        raise AmbiguousDowngrade(str(exc), _proposals(str(exc))) from exc
    except history.AmbiguousUpgrade as exc:
        raise AmbiguousTarget(str(exc), _proposals(str(exc))) from exc
    except (
        history.UnknownRevision,
        history.AmbiguousRevision,
        history.NotOnBranch,
        history.MultipleHeads,
    ) as exc:
        raise UnknownTarget(f"target {target!r}: {exc}") from exc
    except (history.BrokenHistory, history.CycleDetected) as exc:
        raise EnvironmentUnavailable(str(exc)) from exc
    except history.HistoryError as exc:
        raise NotReachable(
            f"cannot {direction} {environment} from {heads_text(heads)} to {target}: {exc}"
        ) from exc


def _refuse_stamp(environment: str, heads: Sequence[str]) -> None:
    """Refuse a stamp of an environment whose version table already names revisions.

    Stamping adopts a database Alembic never ran on (made by create_all, or by hand). Where
    the version table already names revisions, a stamp would only rewrite what the dashboard
    believes without changing a table: later upgrades would skip or repeat DDL. Upgrades
    and downgrades move such an environment, and say what they run.
    """
    if heads:
        raise StampRefused(
            f"{environment} is at {heads_text(heads)}: a stamp is only for an environment"
            " whose version table is missing or empty (adopting Alembic); request an upgrade"
            " or a downgrade to move it"
        )


def _stamp_plan(graph: history.Graph, heads: Sequence[str], target: str) -> plans.Plan:
    try:
        return plans.make_stamp_plan(graph, heads, target)
    except (
        history.UnknownRevision,
        history.AmbiguousRevision,
        history.NotOnBranch,
        history.MultipleHeads,
    ) as exc:
        raise UnknownTarget(f"target {target!r}: {exc}") from exc
    except (history.BrokenHistory, history.CycleDetected) as exc:
        raise EnvironmentUnavailable(str(exc)) from exc


def _proposals(message: str) -> list[str]:
    """Return the explicit targets the history's message offers after "one of: "."""
    _, found, choices = message.rpartition("one of: ")
    if not found:
        return []
    return [choice.strip() for choice in choices.split(", ") if choice.strip()]


def _enqueue_prepare(action_id: int) -> None:
    queue.task_named("prepare_action").enqueue(action_id)


def _plan_hash_of(action: Action) -> str:
    return plans.action_plan_hash(action)


def _prepare_sql(action: Action) -> review.PreparedSQL:
    try:
        config = current_config()
    except ConfigError as exc:
        return review.PreparedSQL.failure(exc)
    env = config.environments.get(action.environment)
    if env is None or env.project != action.project:
        return review.PreparedSQL.failure(
            f"environment {action.environment} is no longer configured"
        )
    try:
        url = env.database_url()
    except NotConfigured as exc:
        return review.PreparedSQL.failure(exc)
    project = config.projects[env.project]
    if action.direction == Action.Direction.STAMP:
        return _prepare_stamp_sql(action, config, env, project, url)
    direction: history.Direction = "downgrade" if action.direction == "downgrade" else "upgrade"
    # Rendered from the private copy the run will use (kept for it), not the live folder.
    try:
        with bundle.approved_copy(manifest=action.bundle, digest=action.fingerprint) as copy:
            return review.prepare_sql(
                project,
                url,
                direction=direction,
                from_heads=action.from_heads,
                target=action.target,
                target_heads=action.target_heads,
                drop_env=child_secrets(config, env),
                approved=copy,
            )
    except bundle.BundleError as exc:
        return review.PreparedSQL.failure(exc)


def _prepare_stamp_sql(
    action: Action, config: DashboardConfig, env: Environment, project: Project, url: str
) -> review.PreparedSQL:
    """Render a stamp's SQL for the version table as it is now: missing, or there and empty."""
    # Offline, Alembic always creates the table first; online, only when it is missing. The
    # SQL is rendered for what is read here, and the run checks that still holds.
    reading = versions.read_environment(env, project)
    if not reading.ok:
        return review.PreparedSQL.failure(f"cannot read {env.name} now: {reading.error}")
    if reading.heads:
        return review.PreparedSQL.failure(
            f"{env.name} is at {heads_text(reading.heads)} now, so the stamp no longer holds"
        )
    try:
        with bundle.approved_copy(manifest=action.bundle, digest=action.fingerprint) as copy:
            return review.prepare_stamp_sql(
                project,
                url,
                revisions=action.target_heads,
                table_exists=reading.table_exists,
                drop_env=child_secrets(config, env),
                approved=copy,
            )
    except bundle.BundleError as exc:
        return review.PreparedSQL.failure(exc)
