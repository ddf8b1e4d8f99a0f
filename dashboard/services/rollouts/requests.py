"""Request a rollout: read every chosen member, group members by plan, render each group's SQL."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from dashboard import audit, history, roles, scripts
from dashboard.config import (
    ConfigError,
    DashboardConfig,
    Fleet,
    NotConfigured,
    current_config,
    parse_database_url,
)
from dashboard.databases import versions
from dashboard.models import Action, Rollout
from dashboard.runner import bundle, review
from dashboard.runner.process import child_secrets
from dashboard.services import history_checks, queue
from dashboard.services.actions import pinning as plans
from dashboard.services.actions.errors import (
    EnvironmentUnavailable,
    NotAllowed,
    NothingToDo,
    UnknownTarget,
)
from dashboard.services.actions.runs import heads_text
from dashboard.services.rollouts.errors import RolloutNotFound, RolloutRefused
from dashboard.services.rollouts.waves import start_running, wave_sizes

READ_POOL = 32  # members read at once while planning; each read is bounded by its timeout


def rollout_request(
    *,
    user: Any,
    fleet: str,
    direction: str,
    target: str,
    members: str = "*",
    reason: str = "",
    request: HttpRequest | None = None,
    prepare: bool = False,
) -> Rollout:
    """Plan an upgrade or downgrade of a fleet's members (those matching a glob); record it.

    Every member is read now. Members at the same heads share one plan, whose offline SQL is
    rendered once (prepare=True now, else by a worker task). Members that cannot run (not
    readable, unknown heads, busy, already there) are left out, each with why.
    """
    if not roles.can_request(user):
        raise NotAllowed("only operators and admins may request rollouts")
    if direction not in (Action.Direction.UPGRADE, Action.Direction.DOWNGRADE):
        raise RolloutRefused(f"a rollout upgrades or downgrades, not {direction!r}")
    target = target.strip()
    if not target:
        raise UnknownTarget(
            "name a target: a revision id or prefix, heads, head, base or label@head"
        )
    config = _config()
    found = _fleet(config, fleet)
    project = config.projects[found.project]
    chosen = [
        m for m in config.members_of(found.name) if fnmatch.fnmatchcase(m.member or "", members)
    ]
    if not chosen:
        raise RolloutRefused(f"no member of fleet {found.name} matches {members!r}")
    try:
        loaded = plans.load_project_history(project, may_run_project_code=prepare)
        loaded, approved = plans.current_bundle(project, loaded, may_run_project_code=prepare)
    except plans.ProjectCodeNeeded as exc:
        raise RolloutRefused(str(exc)) from exc
    except (scripts.ScriptLocationError, OSError, bundle.BundleError) as exc:
        raise EnvironmentUnavailable(f"cannot read project {project.name}: {exc}") from exc
    broken = scripts.syntax_problems(loaded)
    if broken:
        raise RolloutRefused(
            f"Alembic cannot load project {project.name}'s history: {broken[0]};"
            " nothing can be planned until it is fixed"
        )
    # Imports fail where parsing cannot tell: the worker's last check of these very files.
    if refused := history_checks.refusal(project=project.name, fingerprint=loaded.fingerprint):
        raise RolloutRefused(refused)
    readings = versions.read_many([(m, project) for m in chosen], max_workers=READ_POOL)
    busy = set(
        Action.objects.active()
        .filter(environment__in=[m.name for m in chosen])
        .values_list("environment", flat=True)
    )
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    left_out: list[dict[str, str]] = []
    for member, reading in zip(chosen, readings, strict=True):
        why = _left_out_reason(member.name, reading, busy, loaded.graph)
        if not why:
            try:
                plan = plans.make_plan(loaded.graph, reading.heads, target, direction)  # type: ignore[arg-type]
            except history.HistoryError as exc:
                why = f"cannot {direction} from {heads_text(reading.heads)} to {target}: {exc}"
            else:
                if not plan.steps:
                    why = f"already at {heads_text(reading.heads)}: nothing to run"
        if why:
            left_out.append({"member": member.name, "reason": why})
            continue
        # One plan renders other SQL on another dialect: what approvers see is what runs.
        backend = parse_database_url(member.database_url()).get_backend_name()
        key = (*sorted(reading.heads), f"@{backend}")
        group = groups.setdefault(
            key,
            {
                "members": [],
                "from_heads": sorted(reading.heads),
                "dialect": backend,
                "target_heads": sorted(plan.target_heads),
                "plan": plan.revisions,
            },
        )
        group["members"].append(member.name)
    if not groups:
        first = left_out[0]["reason"] if left_out else ""
        raise NothingToDo(
            f"nothing to do: no member of fleet {found.name} would run a revision"
            f" ({len(left_out)} left out; the first: {first})"
        )
    ordered = sorted(groups.values(), key=lambda g: (-len(g["members"]), g["from_heads"]))
    for group in ordered:
        try:
            group["plan_marks"] = plans.plan_marks(
                loaded, approved, group["plan"], direction, parsed_here=project.loader != "alembic"
            )
        except plans.MarksUnreadable as exc:
            raise RolloutRefused(f"{exc}; nothing can be planned until it is fixed") from exc
    count = sum(len(g["members"]) for g in ordered)
    with transaction.atomic():
        bundle.bundle_store(approved)
        rollout = Rollout.objects.create(
            fleet=found.name,
            project=project.name,
            direction=direction,
            target=target,
            members_glob=members,
            requested_by=user if getattr(user, "pk", None) else None,
            requested_by_name=user.get_username(),
            reason=reason.strip(),
            groups=ordered,
            left_out=left_out,
            waves=[str(w) if w.percent is not None else w.count for w in found.waves],
            wave_sizes=wave_sizes(found.waves, count),
            parallel=found.parallel,
            on_error=found.on_error,
            bundle=approved.manifest,
            fingerprint=approved.digest,
            approvals_required=found.policy.approvals_for(direction),
        )
        audit.record(
            "rollout.requested",
            actor=user,
            request=request,
            payload={
                "rollout": rollout.pk,
                "fleet": found.name,
                "direction": direction,
                "target": target,
                "members_glob": members,
                "members": count,
                "groups": [
                    {"from_heads": g["from_heads"], "plan": g["plan"], "members": len(g["members"])}
                    for g in ordered
                ],
                "left_out": len(left_out),
                "fingerprint": approved.digest,
                "approvals_required": rollout.approvals_required,
                "reason": rollout.reason,
            },
        )
        if not prepare:
            rollout_id = rollout.pk
            transaction.on_commit(lambda: queue.task_named("prepare_rollout").enqueue(rollout_id))
    if prepare:
        return rollout_prepare(rollout_id=rollout.pk)
    return rollout


def rollout_prepare(*, rollout_id: int) -> Rollout:
    """Render each group's offline SQL and lint once, fix the rollout hash; start it if no one must approve."""
    rollout = _rollout(rollout_id)
    if rollout.status != Rollout.Status.PREPARING:
        return rollout
    prepared = [_group_sql(rollout, group) for group in rollout.groups]
    with transaction.atomic():
        rollout = Rollout.objects.select_for_update().get(pk=rollout_id)
        if rollout.status != Rollout.Status.PREPARING:
            return rollout
        groups = []
        for group, sql in zip(rollout.groups, prepared, strict=True):
            groups.append(
                {
                    **group,
                    "sql": sql.sql,
                    "sql_sha256": sql.sql_sha256,
                    "sql_note": sql.note,
                    "lint": sql.lint,
                }
            )
        rollout.groups = groups
        rollout.prepared_at = timezone.now()
        rollout.rollout_hash = rollout_hash(rollout)
        failed = [g["sql_note"] for g in groups if review.note_says_failed(g["sql_note"])]
        rollout.status = Rollout.Status.REQUESTED
        if failed:
            # Nobody could review what would run: it can never be approved.
            rollout.status = Rollout.Status.FAILED
            rollout.error = f"{failed[0]}; nothing ran: request it again"
            rollout.finished_at = timezone.now()
        rollout.save()
        audit.record(
            "rollout.prepared" if not failed else "rollout.failed",
            actor_name=audit.SYSTEM,
            payload={
                "rollout": rollout.pk,
                "fleet": rollout.fleet,
                "rollout_hash": rollout.rollout_hash,
                "sql_sha256": [g["sql_sha256"] for g in groups],
                **({"error": rollout.error} if failed else {}),
            },
        )
        if not failed and rollout.approvals_required == 0:
            audit.record(
                "rollout.approved",
                actor_name=audit.SYSTEM,
                payload={
                    "rollout": rollout.pk,
                    "rollout_hash": rollout.rollout_hash,
                    "approvals": 0,
                },
            )
            start_running(rollout, approvers=[])
    return rollout


def rollout_hash(rollout: Rollout) -> str:
    """Return sha256 over the canonical JSON of everything a rollout's approval vouches for."""
    document = {
        "fleet": rollout.fleet,
        "direction": rollout.direction,
        "target": rollout.target,
        "fingerprint": rollout.fingerprint,
        "wave_sizes": rollout.wave_sizes,
        "parallel": rollout.parallel,
        "on_error": rollout.on_error,
        "groups": [
            {
                "members": sorted(g["members"]),
                "from_heads": g["from_heads"],
                "target_heads": g["target_heads"],
                "plan": g["plan"],
                "plan_marks": g.get("plan_marks") or {},
                "sql_sha256": g.get("sql_sha256", ""),
                "dialect": g.get("dialect", ""),
            }
            for g in rollout.groups
        ],
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _group_sql(rollout: Rollout, group: dict[str, Any]) -> review.PreparedSQL:
    """Render a group's SQL once, from its first member's dialect and the approved copy."""
    try:
        config = current_config()
    except ConfigError as exc:
        return review.PreparedSQL.failure(exc)
    env = config.environments.get(group["members"][0])
    if env is None:
        return review.PreparedSQL.failure(f"member {group['members'][0]} is no longer configured")
    try:
        url = env.database_url()
    except NotConfigured as exc:
        return review.PreparedSQL.failure(exc)
    direction: history.Direction = "downgrade" if rollout.direction == "downgrade" else "upgrade"
    try:
        with bundle.approved_copy(manifest=rollout.bundle, digest=rollout.fingerprint) as copy:
            return review.prepare_sql(
                config.projects[rollout.project],
                url,
                direction=direction,
                from_heads=group["from_heads"],
                target=rollout.target,
                target_heads=group["target_heads"],
                drop_env=child_secrets(config, env),
                approved=copy,
            )
    except bundle.BundleError as exc:
        return review.PreparedSQL.failure(exc)


def _left_out_reason(
    name: str, reading: versions.Reading, busy: set[str], graph: history.Graph
) -> str:
    if not reading.ok:
        return f"cannot be read now: {reading.error}"
    unknown = [head for head in reading.heads if head not in graph]
    if unknown:
        return f"is at {', '.join(unknown)}, which the script directory does not have"
    if name in busy:
        return "has an unfinished action: request again once it has finished"
    return ""


def _config() -> DashboardConfig:
    try:
        return current_config()
    except ConfigError as exc:
        raise RolloutRefused(f"the config cannot be used: {exc}") from exc


def _fleet(config: DashboardConfig, name: str) -> Fleet:
    found = config.fleets.get(name)
    if found is None:
        known = ", ".join(sorted(config.fleets)) or "none"
        raise RolloutRefused(f"no fleet named {name!r} (configured: {known})")
    return found


def _rollout(rollout_id: int) -> Rollout:
    found = Rollout.objects.filter(pk=rollout_id).first()
    if found is None:
        raise RolloutNotFound(f"no rollout #{rollout_id}")
    return found


def members_text(names: Sequence[str], limit: int = 5) -> str:
    """Return up to limit member names, and how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
