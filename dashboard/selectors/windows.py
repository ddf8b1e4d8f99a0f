"""Maintenance windows and scheduled actions as pages show them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from django.utils import timezone

from dashboard.config import ConfigError, Environment, current_config
from dashboard.config import windows as spans
from dashboard.models import Action


@dataclass(frozen=True)
class WindowsShown:
    """An environment's windows: their text, when one next opens, the zone run-at is read in."""

    texts: tuple[str, ...]
    summary: str  # "open now until Sat 04:00 CET" / "next: Sat 02:00 Europe/Berlin, in 2 d 3 h"
    zone: str
    problem: str = ""


@dataclass(frozen=True)
class ScheduleShown:
    """When a scheduled action starts and why, and the run-at time its requester chose."""

    scheduled_for: datetime | None
    scheduled_text: str
    note: str
    run_at: datetime | None
    run_at_text: str


def _environment(name: str) -> Environment | None:
    """Return the environment called name, or the policy of the fleet called name."""
    try:
        config = current_config()
    except ConfigError:
        return None  # the page says what is wrong with the config elsewhere
    fleet = config.fleets.get(name)
    return config.environments.get(name) or (fleet.policy if fleet is not None else None)


def windows_shown(env: Environment | None, *, now: datetime | None = None) -> WindowsShown | None:
    """Return an environment's windows as pages show them; None when it has none."""
    if env is None:
        return None
    if env.windows_error is not None:
        return WindowsShown(
            (), "no window opens until its windows are fixed", "UTC", env.windows_error
        )
    if not env.windows:
        return None
    summary = spans.describe(env.windows, now or timezone.now())
    return WindowsShown(tuple(w.text for w in env.windows), summary, env.windows[0].zone)


def windows_summaries(names: Iterable[str]) -> tuple[str, ...]:
    """Return what each named environment's next window says, from one read of the config."""
    try:
        config = current_config()
    except ConfigError:
        return ()
    now = timezone.now()
    found = []
    for name in names:
        fleet = config.fleets.get(name)
        env = config.environments.get(name) or (fleet.policy if fleet is not None else None)
        found.append(window_line(windows_shown(env, now=now)))
    return tuple(found)


def window_line(shown: WindowsShown | None) -> str:
    """Return the one line a row shows of its windows ("" without windows)."""
    if shown is None:
        return ""
    return f"window {shown.summary}" if not shown.problem else "windows unreadable"


def environment_windows(name: str, *, now: datetime | None = None) -> WindowsShown | None:
    """Return the named environment's windows as pages show them; None when it has none."""
    return windows_shown(_environment(name), now=now)


def run_at_zone(name: str) -> str:
    """Return the zone a run-at time without an offset is read in: the first window's, or UTC."""
    env = _environment(name)
    return env.windows[0].zone if env is not None and env.windows else "UTC"


def action_schedule(action: Action) -> ScheduleShown | None:
    """Return when and why a scheduled action starts, and its run-at time; None without either."""
    scheduled = action.status == Action.Status.SCHEDULED
    if not scheduled and action.run_at is None:
        return None
    zone = run_at_zone(action.environment)
    return ScheduleShown(
        scheduled_for=action.scheduled_for if scheduled else None,
        scheduled_text=_local(action.scheduled_for, zone) if scheduled else "",
        note=action.schedule_note if scheduled else "",
        run_at=action.run_at,
        run_at_text=_local(action.run_at, zone),
    )


def _local(moment: datetime | None, zone: str) -> str:
    if moment is None:
        return "not before its windows are fixed"
    return f"{moment.astimezone(ZoneInfo(zone)):%a %Y-%m-%d %H:%M} {zone}"
