"""Rollouts as plain data for the command line and the API: status, waves, members, counts."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db.models import Count
from django.utils import timezone

from dashboard.models import Action, Rollout
from dashboard.selectors.actions import status_shown

# A member of a rollout no one approved yet has no action: it waits for the decision...
PENDING = "pending"
# ...and one whose rollout ended before it was made (rejected, cancelled, not prepared) never ran.
NOT_RUN = "not_run"
LIST_LIMIT = 200
# Member states in the order counts list them: first what moves, then how members ended.
STATE_ORDER = (
    Action.Status.RUNNING,
    Action.Status.QUEUED,
    Action.Status.SCHEDULED,
    Action.Status.APPROVED,
    PENDING,
    Action.Status.SUCCEEDED,
    Action.Status.FAILED,
    Action.Status.INTERRUPTED,
    Action.Status.CANCELLED,
    Action.Status.SUPERSEDED,
    NOT_RUN,
)
MEMBER_FIELDS = (
    "id",
    "environment",
    "status",
    "wave",
    "error",
    "worker",
    "started_at",
    "finished_at",
    "heartbeat_at",
)


def rollout_summary(*, rollout_id: int, with_sql: bool = False) -> dict[str, Any] | None:
    """Return a rollout with its waves, members and counts by state, or None when there is none."""
    rollout = Rollout.objects.filter(pk=rollout_id).first()
    if rollout is None:
        return None
    now = timezone.now()
    members = _members(rollout, now=now)
    skipped = set(rollout.skipped)
    counts = _count(m["status"] for m in members)
    done = sum(1 for m in members if m["status"] in Action.FINISHED)
    return {
        "id": rollout.pk,
        "fleet": rollout.fleet,
        "project": rollout.project,
        "direction": rollout.direction,
        "target": rollout.target,
        "members_glob": rollout.members_glob,
        "status": rollout.status,
        "requested_by": rollout.requested_by_name,
        "reason": rollout.reason,
        "approvals_required": rollout.approvals_required,
        "approvals": [
            {
                "user": approval.username,
                "decision": approval.decision,
                "comment": approval.comment,
                "rollout_hash": approval.rollout_hash,
                "at": approval.created_at.isoformat(),
            }
            for approval in rollout.approvals.all()
        ],
        "rollout_hash": rollout.rollout_hash,
        "fingerprint": rollout.fingerprint,
        "waves_configured": list(rollout.waves),
        "parallel": rollout.parallel,
        "on_error": rollout.on_error,
        "current_wave": rollout.current_wave,
        "waves": [
            {
                "wave": number,
                "size": size,
                "counts": _count(m["status"] for m in members if m["wave"] == number),
            }
            for number, size in enumerate(rollout.wave_sizes, start=1)
        ],
        "counts": counts,
        "progress": {"done": done, "total": len(members)},
        "members": [{**m, "skipped": m["name"] in skipped} for m in members],
        "groups": [_group(group, with_sql=with_sql) for group in rollout.groups],
        "left_out": [
            {"member": str(item.get("member", "")), "reason": str(item.get("reason", ""))}
            for item in rollout.left_out
            if isinstance(item, dict)
        ],
        "skipped": sorted(skipped),
        "paused_reason": rollout.paused_reason,
        "error": rollout.error,
        "created_at": _when(rollout.created_at),
        "prepared_at": _when(rollout.prepared_at),
        "decided_at": _when(rollout.decided_at),
        "started_at": _when(rollout.started_at),
        "finished_at": _when(rollout.finished_at),
    }


def rollout_rows(*, fleet: str | None = None, limit: int = LIST_LIMIT) -> list[dict[str, Any]]:
    """Return rollouts newest first (of one fleet if named), each with its counts by state."""
    query = Rollout.objects.defer("groups", "left_out", "bundle").order_by("-created_at", "-id")
    if fleet and "\x00" in fleet:
        return []  # no fleet's name holds a NUL, and PostgreSQL refuses to compare one
    if fleet:
        query = query.filter(fleet=fleet)
    shown = list(query[:limit])
    by_rollout: dict[int, dict[str, int]] = {}
    found = (
        Action.objects.filter(rollout_id__in=[r.pk for r in shown])
        .values("rollout_id", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for item in found:
        by_rollout.setdefault(item["rollout_id"], {})[item["status"]] = item["n"]
    rows = []
    for rollout in shown:
        total = sum(rollout.wave_sizes)
        # Before approval no member has an action: they all wait (or never ran).
        counts = _ordered(
            by_rollout.get(rollout.pk) or ({_unmade(rollout): total} if total else {})
        )
        done = sum(n for status, n in counts.items() if status in Action.FINISHED)
        rows.append(
            {
                "id": rollout.pk,
                "fleet": rollout.fleet,
                "direction": rollout.direction,
                "target": rollout.target,
                "status": rollout.status,
                "requested_by": rollout.requested_by_name,
                "counts": counts,
                "progress": {"done": done, "total": total},
                "created_at": _when(rollout.created_at),
                "finished_at": _when(rollout.finished_at),
            }
        )
    return rows


def _members(rollout: Rollout, *, now: datetime) -> list[dict[str, Any]]:
    """Return every member of the rollout, from its action where one was made."""
    made = {
        action.environment: action
        for action in Action.objects.filter(rollout_id=rollout.pk).only(*MEMBER_FIELDS)
    }
    names = sorted(str(name) for group in rollout.groups for name in group.get("members") or [])
    # Waves as start_running assigns them: members by name, the wave sizes in order.
    planned = [n for n, size in enumerate(rollout.wave_sizes, start=1) for _ in range(size)]
    unmade = _unmade(rollout)
    members = []
    for index, name in enumerate(names):
        action = made.get(name)
        if action is None:
            members.append(
                {
                    "name": name,
                    "status": unmade,
                    "wave": planned[index] if index < len(planned) else None,
                    "error": "",
                    "action_id": None,
                    "started_at": None,
                    "finished_at": None,
                }
            )
            continue
        # As the pages say it: a run whose worker went silent is interrupted.
        status, label = status_shown(action, now=now)
        members.append(
            {
                "name": name,
                "status": status,
                "wave": action.wave,
                "error": action.error or (label if status != action.status else ""),
                "action_id": action.pk,
                "started_at": _when(action.started_at),
                "finished_at": _when(action.finished_at),
            }
        )
    return members


def _unmade(rollout: Rollout) -> str:
    return NOT_RUN if rollout.is_finished else PENDING


def _group(group: dict[str, Any], *, with_sql: bool) -> dict[str, Any]:
    members = [str(m) for m in group.get("members") or []]
    shown = {
        "member_count": len(members),
        "members": members,
        "from_heads": list(group.get("from_heads") or []),
        "target_heads": list(group.get("target_heads") or []),
        "plan": list(group.get("plan") or []),
        "plan_marks": group.get("plan_marks") or {},
        "sql_sha256": str(group.get("sql_sha256") or ""),
        "sql_note": str(group.get("sql_note") or ""),
        "lint": list(group.get("lint") or []),
    }
    if with_sql:
        shown["sql"] = str(group.get("sql") or "")
    return shown


def _count(statuses: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return _ordered(counts)


def _ordered(counts: dict[str, int]) -> dict[str, int]:
    known = [s for s in STATE_ORDER if counts.get(s)]
    others = sorted(s for s, n in counts.items() if n and s not in STATE_ORDER)
    return {s: counts[s] for s in known + others}


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
