"""Hold approved actions to their environment's windows and run-at time; release them when due."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.db import transaction
from django.utils import timezone

from dashboard import audit
from dashboard.config import ConfigError, Environment, current_config
from dashboard.config import windows as spans
from dashboard.models import Action
from dashboard.selectors.forecasts import plan_forecast_seconds
from dashboard.services import queue

logger = logging.getLogger(__name__)

# A plan longer than any window starts at an opening; this late still counts as at it, for
# the deferred run's and housekeeping's (30 s) lag, or a short wait for the run lock.
OPENING_GRACE = timedelta(minutes=5)


@dataclass(frozen=True)
class Hold:
    """Why an action may not start now, and when it may (None: not until the config changes)."""

    until: datetime | None
    note: str


def hold_for(action: Action, env: Environment, *, now: datetime | None = None) -> Hold | None:
    """Return why and until when the action must wait, or None when it may start now."""
    now = now or timezone.now()
    if env.windows_error is not None:
        return Hold(None, f"{env.windows_error}; it waits until the windows are fixed")
    not_before = max(now, action.run_at) if action.run_at is not None else now
    asked = (
        f"run at {stamp(action.run_at, env)} as requested"
        if action.run_at is not None and action.run_at > now
        else ""
    )
    if not env.windows:
        return Hold(not_before, asked) if asked else None
    needs = _forecast(action)
    found = spans.earliest_start(env.windows, not_before, needs=needs)
    too_long = ""
    if found is None:
        # Longer than any window: no window fits, so it gets a whole one, from its opening.
        found = _whole_window(env.windows, not_before)
        if found is None:
            return Hold(None, f"no window of {env.name} opens in the next weeks")
        too_long = (
            f"its forecast ({spans.duration_text(needs or 0)}) is longer than any window of"
            f" {env.name}: it starts when one opens, to have all of it, and may run past its end"
        )
    start, span = found
    if start <= now:
        return None
    reasons = [asked] if asked else []
    open_then = spans.current_span(env.windows, not_before)
    if too_long:
        reasons.append(too_long)
    elif start > not_before and needs is not None and open_then is not None:
        left = (open_then.end - not_before).total_seconds()
        reasons.append(
            f"its forecast ({spans.duration_text(needs)}) exceeds the"
            f" {spans.duration_text(left)} left in the window open {'then' if asked else 'now'}:"
            " it starts in the next window that fits"
        )
    elif start > not_before:
        reasons.append(f"{env.name}'s windows are closed {'then' if asked else 'now'}")
    when = spans.wall_clock(start, span.start_zone)
    return Hold(start, f"{'; '.join(reasons)} (starts {when})")


def _whole_window(
    windows: tuple[spans.Window, ...], at: datetime
) -> tuple[datetime, spans.Span] | None:
    """Return the first window opening at or after `at` (or at most OPENING_GRACE before it)."""
    since = at - OPENING_GRACE
    for span in spans.open_spans(windows, since, at + spans.HORIZON):
        if span.start >= since:
            return max(span.start, at), span
    return None


def _forecast(action: Action) -> float | None:
    """Return the plan's forecast in seconds; None when unknown (or it cannot be worked out)."""
    try:
        return plan_forecast_seconds(action)
    except Exception:  # a forecast is advice: without one the action starts in the window
        logger.exception("could not forecast action %s", action.pk)
        return None


def stamp(moment: datetime, env: Environment) -> str:
    """Render a moment in the zone of the environment's first window (else UTC)."""
    zone = env.windows[0].zone if env.windows else "UTC"
    return f"{moment.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M} {zone}"


def environment_of(action: Action) -> Environment | None:
    """Return the action's environment from the current config; None when it cannot be read."""
    try:
        return current_config().environments.get(action.environment)
    except ConfigError:
        return None  # the run itself says what is wrong with the config


def action_hold(action: Action, *, now: datetime | None = None) -> bool:
    """Schedule an approved or queued action that may not start now; say whether it must wait.

    Called inside a transaction holding the action's row. A new or changed schedule is
    audited as action.scheduled and gets a run deferred to its start (housekeeping looks too).
    """
    env = environment_of(action)
    if env is None:
        return False
    hold = hold_for(action, env, now=now)
    if hold is None:
        return False
    _apply_hold(action, hold)
    return True


def action_put_back(action: Action, hold: Hold, *, why: str) -> bool:
    """Put a running action back to scheduled: its window closed before Alembic (re)started.

    Nothing of it stayed applied. Says whether it was put back: not when it was declared
    interrupted meanwhile, or a cancel was asked for (the caller ends it cancelled).
    """
    with transaction.atomic():
        current = (
            Action.objects.select_for_update()
            .filter(pk=action.pk, status=Action.Status.RUNNING, cancel_requested=False)
            .first()
        )
        if current is None:
            return False
        # As before its claim: the next window's run starts afresh.
        Action.objects.filter(pk=current.pk).update(
            started_at=None,
            heartbeat_at=None,
            worker="",
            progress_done=0,
            blockers=[],
            blockers_at=None,
        )
        current.refresh_from_db()
        _apply_hold(current, Hold(hold.until, f"{why}; {hold.note}"))
    return True


def _apply_hold(action: Action, hold: Hold) -> None:
    """Store and audit the action's schedule unless it is already the one held."""
    changed = (
        action.status != Action.Status.SCHEDULED
        or action.scheduled_for != hold.until
        or action.schedule_note != hold.note
    )
    if not changed:
        return
    before = action.status
    Action.objects.filter(pk=action.pk).update(
        status=Action.Status.SCHEDULED,
        scheduled_for=hold.until,
        schedule_note=hold.note,
        queued_at=None,
    )
    action.refresh_from_db()
    audit.record(
        "action.scheduled",
        actor_name=audit.SYSTEM,
        environment=action.environment,
        action_id=action.pk,
        payload={
            "scheduled_for": hold.until.isoformat() if hold.until else None,
            "reason": hold.note,
            "from_status": before,
            "run_at": action.run_at.isoformat() if action.run_at else None,
        },
    )
    if hold.until is not None:
        action_id, when = action.pk, hold.until
        transaction.on_commit(lambda: _enqueue_at(action_id, when))


def action_release(action: Action, *, now: datetime | None = None) -> bool:
    """Queue a scheduled action whose time has come; say whether it is queued now.

    Called inside a transaction holding the action's row; one still held is rescheduled.
    """
    if action.status != Action.Status.SCHEDULED or action_hold(action, now=now):
        return False
    Action.objects.filter(pk=action.pk, status=Action.Status.SCHEDULED).update(
        status=Action.Status.QUEUED, queued_at=timezone.now(), scheduled_for=None
    )
    action.refresh_from_db()
    audit.record(
        "action.queued",
        actor_name=audit.SYSTEM,
        environment=action.environment,
        action_id=action.pk,
        payload={"from_status": "scheduled", "reason": action.schedule_note},
    )
    return True


def actions_release_due() -> list[int]:
    """Queue every scheduled action whose window (or run-at time) has come; return their ids.

    The worker's housekeeping calls it, so a lost deferred run never strands an action.
    """
    released = []
    for pk in (
        Action.objects.filter(status=Action.Status.SCHEDULED)
        .order_by("pk")
        .values_list("pk", flat=True)
    ):
        try:
            with transaction.atomic():
                action = Action.objects.select_for_update().filter(pk=pk).first()
                if action is None or not action_release(action):
                    continue
                transaction.on_commit(functools.partial(_enqueue_now, pk))
        except Exception:  # one action's trouble must not hold up the others
            logger.exception("could not look at scheduled action %s", pk)
            continue
        released.append(pk)
    return released


def _enqueue_at(action_id: int, when: datetime) -> None:
    """Defer a run to when, where the backend can; housekeeping releases it otherwise."""
    task = queue.task_named("run_action")
    if not task.get_backend().supports_defer:
        return
    try:
        result = task.using(run_after=when).enqueue(action_id)
    except Exception:  # housekeeping still releases it when due
        logger.exception("could not defer the run of action %s", action_id)
        return
    Action.objects.filter(pk=action_id, status=Action.Status.SCHEDULED).update(
        task_id=str(result.id)
    )


def _enqueue_now(action_id: int) -> None:
    result = queue.task_named("run_action").enqueue(action_id)
    Action.objects.filter(pk=action_id).update(task_id=str(result.id))


def run_at_problem(env: Environment, run_at: datetime, *, now: datetime | None = None) -> str:
    """Say why run_at cannot be an action's start on env ("" when it can)."""
    now = now or timezone.now()
    if timezone.is_naive(run_at):
        return "run at needs a time zone (like 2026-06-06T02:30+02:00 or …Z)"
    if run_at <= now:
        return f"run at {stamp(run_at, env)} is not in the future"
    if env.windows_error is not None:
        return f"{env.windows_error}: no run-at time can be checked against them"
    if env.windows and not spans.is_open(env.windows, run_at):
        shown = "; ".join(window.text for window in env.windows)
        upcoming = spans.earliest_start(env.windows, run_at)
        after = (
            f"; the next one after it opens {spans.wall_clock(upcoming[0], upcoming[1].start_zone)}"
            if upcoming is not None
            else ""
        )
        return f"run at {stamp(run_at, env)} is outside {env.name}'s windows ({shown}){after}"
    return ""
