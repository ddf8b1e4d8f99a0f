"""Django Tasks entry points: thin shells that call services."""

from __future__ import annotations

from django.tasks import task

# Light on purpose: ready() imports this module, so CLI reads pay for what it imports.
from dashboard.services import queue


@queue.register
@task
def refresh_status_periodically() -> int:
    """Read every environment, store snapshots, then schedule the next run; return the count."""
    from dashboard.services import status

    try:
        return len(status.status_refresh())
    finally:
        # Scheduled even when this run fails (a broken config), so fixing it needs no restart.
        status.schedule_periodic_refresh(delay=status.refresh_interval())


@queue.register
@task
def prepare_action(action_id: int) -> str:
    """Render an action's offline SQL and lint in the worker; return its status."""
    from dashboard.services import actions

    return str(actions.action_prepare(action_id=action_id).status)


@queue.register
@task
def run_action(action_id: int) -> str:
    """Run a queued action, or try again shortly while its environment is busy; return its status."""
    from dashboard.models import Action
    from dashboard.services import actions

    action = actions.action_run(action_id=action_id, worker=actions.worker_name())
    if action.status == Action.Status.QUEUED:
        actions.enqueue_run(action_id, delay=actions.retry_delay(action))
    elif action.rollout_id is not None and action.is_finished:
        from dashboard.services import rollouts

        # The member's slot is free: start the next member (housekeeping does it otherwise).
        rollouts.rollout_advance(rollout_id=action.rollout_id)
    return str(action.status)


@queue.register
@task
def prepare_rollout(rollout_id: int) -> str:
    """Render a rollout's SQL once per group of members in the worker; return its status."""
    from dashboard.services import rollouts

    return str(rollouts.rollout_prepare(rollout_id=rollout_id).status)


@queue.register
@task
def keep_house() -> dict[str, object]:
    """Mark silent runs interrupted, requeue lost runs, record config changes; then reschedule."""
    from dataclasses import asdict

    from dashboard import worker

    try:
        return asdict(worker.Housekeeping().run_once())
    finally:
        worker.schedule_housekeeping(delay=worker.housekeeping_interval())


# Below actions (priority 0): with a single worker, a waiting approved action goes first.
CHECK_PRIORITY = -10


@queue.register
@task(priority=CHECK_PRIORITY)
def check_schema(check_id: int) -> str:
    """Run one pending schema check (on demand or after an action); return its state."""
    from dashboard.services import drift

    return str(drift.schema_check_run(check_id=check_id).state)


@queue.register
@task(priority=CHECK_PRIORITY)
def check_schemas_periodically() -> int:
    """Check the environments whose periodic schema check is due, then schedule the next look."""
    from dashboard.services import drift

    try:
        return drift.schemas_check_due()
    finally:
        drift.schedule_periodic_checks(delay=drift.PERIODIC_TICK)


@queue.register
@task
def discover_fleets_periodically() -> int:
    """Find the members of fleets whose discovery is due, then schedule the next look."""
    from dashboard.services import fleets

    try:
        return len(fleets.fleets_discover_due())
    finally:
        # Scheduled even when this look fails (a broken config), so fixing it needs no restart.
        fleets.schedule_periodic_discovery(delay=fleets.DISCOVERY_TICK)


@queue.register
@task(priority=CHECK_PRIORITY)
def check_histories_periodically() -> list[str]:
    """Ask Alembic to load each history whose files changed or whose check is old; reschedule."""
    from dashboard.services import history_checks

    try:
        return history_checks.histories_check_due()
    finally:
        history_checks.schedule_periodic_history_checks(delay=history_checks.TICK)
