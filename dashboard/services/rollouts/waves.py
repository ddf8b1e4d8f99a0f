"""Run a rollout's members wave after wave, at most `parallel` at once across every worker."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.db import transaction
from django.utils import timezone

from dashboard import audit
from dashboard.config import Wave
from dashboard.models import Action, Approval, Rollout
from dashboard.services import queue
from dashboard.services.actions import pinning as plans

logger = logging.getLogger(__name__)

# A member in one of these holds one of the rollout's `parallel` slots (a scheduled one waits
# for its window in its slot: the wave is not over, and no later member overtakes it).
BUSY = (Action.Status.SCHEDULED, Action.Status.QUEUED, Action.Status.RUNNING)
# A member that ended like this stops a rollout whose on_error is "pause".
BROKE = (Action.Status.FAILED, Action.Status.INTERRUPTED)


def wave_sizes(waves: Sequence[Wave], total: int) -> list[int]:
    """Return how many members each wave adds; empty waves are dropped, the rest go last."""
    sizes, reached = [], 0
    for wave in waves:
        reach = wave.reach(total)
        if reach > reached:
            sizes.append(reach - reached)
            reached = reach
    if reached < total:
        sizes.append(total - reached)  # members no wave reaches run in a last one
    return sizes


def start_running(rollout: Rollout, *, approvers: Sequence[Approval | Any]) -> None:
    """Make each member's action, approved by the rollout's approvers, and start the first wave.

    Called inside a transaction holding the rollout's row.
    """
    members = sorted(
        ((name, group) for group in rollout.groups for name in group["members"]),
        key=lambda item: item[0],
    )
    waves = [n for n, size in enumerate(rollout.wave_sizes, start=1) for _ in range(size)]
    now = timezone.now()
    actions = []
    for (name, group), wave in zip(members, waves, strict=True):
        action = Action(
            environment=name,
            project=rollout.project,
            direction=rollout.direction,
            target=rollout.target,
            target_heads=group["target_heads"],
            from_heads=group["from_heads"],
            plan=group["plan"],
            plan_marks=group.get("plan_marks") or {},
            sql=group.get("sql", ""),
            sql_sha256=group.get("sql_sha256", ""),
            sql_note=group.get("sql_note", ""),
            lint=group.get("lint", []),
            prepared_at=rollout.prepared_at,
            fingerprint=rollout.fingerprint,
            bundle=rollout.bundle,
            status=Action.Status.APPROVED,
            approvals_required=rollout.approvals_required,
            requested_by_id=rollout.requested_by_id,
            requested_by_name=rollout.requested_by_name,
            reason=rollout.reason,
            decided_at=now,
            progress_total=len(group["plan"]),
            rollout=rollout,
            wave=wave,
        )
        action.plan_hash = plans.action_plan_hash(action)
        actions.append(action)
    created = Action.objects.bulk_create(actions)
    Approval.objects.bulk_create(
        Approval(
            action=action,
            user_id=approval.user_id,
            username=approval.username,
            decision=Approval.Decision.APPROVE,
            comment=f"rollout #{rollout.pk}",
            plan_hash=action.plan_hash,
        )
        for action in created
        for approval in approvers
    )
    rollout.status = Rollout.Status.RUNNING
    rollout.started_at = now
    rollout.decided_at = now
    rollout.current_wave = 1
    rollout.save(update_fields=["status", "started_at", "decided_at", "current_wave"])
    audit.record(
        "rollout.started",
        actor_name=audit.SYSTEM,
        payload={
            "rollout": rollout.pk,
            "fleet": rollout.fleet,
            "members": len(created),
            "wave_sizes": rollout.wave_sizes,
            "parallel": rollout.parallel,
        },
    )
    _advance_locked(rollout)


def rollout_advance(*, rollout_id: int) -> Rollout | None:
    """Start the members the rollout's slots and waves allow, or pause or finish it."""
    with transaction.atomic():
        # The rollout's row lock serialises every worker's advance: slots are counted under it.
        rollout = Rollout.objects.select_for_update().filter(pk=rollout_id).first()
        if rollout is None:
            return None
        if rollout.status == Rollout.Status.RUNNING:
            _advance_locked(rollout)
    return rollout


def rollouts_advance_running() -> list[int]:
    """Advance every running rollout (housekeeping: a worker may have died between members)."""
    advanced = []
    for rollout_id in Rollout.objects.running().values_list("pk", flat=True):
        try:
            rollout_advance(rollout_id=rollout_id)
        except Exception:  # one rollout's trouble must not hold up the others
            logger.exception("could not advance rollout %s", rollout_id)
            continue
        advanced.append(rollout_id)
    return advanced


def _advance_locked(rollout: Rollout) -> None:
    """Advance a running rollout whose row this transaction holds."""
    rows = list(rollout.actions.values_list("pk", "environment", "status", "wave"))
    busy = sum(1 for _, _, status, _ in rows if status in BUSY)
    skipped = set(rollout.skipped)
    while True:
        in_wave = [row for row in rows if row[3] == rollout.current_wave]
        broke = [name for _, name, status, _ in rows if status in BROKE and name not in skipped]
        if broke and rollout.on_error == "pause":
            _pause(rollout, broke)
            return
        waiting = sorted(
            (row for row in in_wave if row[2] == Action.Status.APPROVED), key=lambda r: r[1]
        )
        wave_busy = any(row[2] in BUSY for row in in_wave)
        if waiting:
            free = max(0, rollout.parallel - busy)
            for pk, _name, _status, _wave in waiting[:free]:
                _queue_member(pk)
            return
        if wave_busy:
            return  # the next wave starts once every member of this one has ended
        if rollout.current_wave >= len(rollout.wave_sizes):
            _finish(rollout, rows)
            return
        rollout.current_wave += 1
        rollout.save(update_fields=["current_wave"])
        audit.record(
            "rollout.wave_started",
            actor_name=audit.SYSTEM,
            payload={
                "rollout": rollout.pk,
                "wave": rollout.current_wave,
                "members": rollout.wave_sizes[rollout.current_wave - 1],
            },
        )


def _queue_member(action_id: int) -> None:
    now = timezone.now()
    moved = Action.objects.filter(pk=action_id, status=Action.Status.APPROVED).update(
        status=Action.Status.QUEUED, queued_at=now
    )
    if moved:
        transaction.on_commit(lambda: queue.task_named("run_action").enqueue(action_id))


def _pause(rollout: Rollout, broke: list[str]) -> None:
    rollout.status = Rollout.Status.PAUSED
    shown = ", ".join(broke[:5]) + (f" and {len(broke) - 5} more" if len(broke) > 5 else "")
    rollout.paused_reason = (
        f"{len(broke)} member{'s' if len(broke) != 1 else ''} failed ({shown}): no new member"
        " starts until an operator resumes (skipping them) or cancels"
    )
    rollout.save(update_fields=["status", "paused_reason"])
    audit.record(
        "rollout.paused",
        actor_name=audit.SYSTEM,
        payload={"rollout": rollout.pk, "wave": rollout.current_wave, "failed": broke},
    )


def _finish(rollout: Rollout, rows: list[tuple[int, str, str, int | None]]) -> None:
    skipped = set(rollout.skipped)
    not_done = [
        name
        for _, name, status, _ in rows
        if status != Action.Status.SUCCEEDED and name not in skipped
    ]
    rollout.status = Rollout.Status.FAILED if not_done else Rollout.Status.SUCCEEDED
    rollout.finished_at = timezone.now()
    if not_done:
        rollout.error = f"{len(not_done)} member(s) did not succeed: {', '.join(not_done[:10])}"
    rollout.save(update_fields=["status", "finished_at", "error"])
    counts: dict[str, int] = {}
    for _, _, status, _ in rows:
        counts[status] = counts.get(status, 0) + 1
    audit.record(
        f"rollout.{rollout.status}",
        actor_name=audit.SYSTEM,
        payload={
            "rollout": rollout.pk,
            "counts": counts,
            "skipped": sorted(skipped),
            "not_succeeded": not_done,
        },
    )
