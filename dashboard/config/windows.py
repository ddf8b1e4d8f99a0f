"""Maintenance windows: parse "Sat 02:00-04:00 Europe/Berlin" and answer when they are open.

Pure arithmetic (no Django, no I/O). Each window names the weekdays it starts on, a start
and an end wall-clock time (an end at or before the start is on the next day) and an IANA
zone. Wall-clock times are read as "the first instant the zone's clock shows at least that
time": a start that a DST jump skips opens at the jump, an ambiguous one (the clock turned
back) opens at its first occurrence, and likewise for ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_EVERY_DAY = ("daily", "every day", "mon-sun")
_WINDOW = re.compile(
    r"\s*(?P<days>.+?)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s+(?P<zone>\S+)\s*\Z"
)
MINUTES_A_DAY = 24 * 60
# How far ahead openings are looked for: past a few DST weeks, so a forecast that fits only
# the longer window of a transition day is still found.
HORIZON = timedelta(days=42)
MAX_TEXT = 200


class WindowError(ValueError):
    """A window's text cannot be read; the message says what is wrong and quotes it."""


@dataclass(frozen=True)
class Window:
    """One weekly window: the weekdays it starts on (0 is Monday), start and end minutes, zone."""

    text: str
    days: tuple[int, ...]
    start: int  # minutes after midnight
    end: int  # minutes after midnight, 1440 for 24:00; at or before start: the next day
    zone: str

    def spans(self, since: datetime, until: datetime) -> list[Span]:
        """Return this window's occurrences that end after since and start before until."""
        zone = ZoneInfo(self.zone)
        first = since.astimezone(zone).date() - timedelta(days=2)
        last = until.astimezone(zone).date() + timedelta(days=1)
        found = []
        day = first
        while day <= last:
            if day.weekday() in self.days:
                opens = _first_instant(zone, day, self.start)
                end_day = day if self.end > self.start else day + timedelta(days=1)
                closes = _first_instant(zone, end_day, self.end)
                # A window lying wholly inside a skipped hour does not happen that day.
                if closes > opens and closes > since and opens < until:
                    found.append(Span(opens, closes, self.zone, self.zone))
            day += timedelta(days=1)
        return found


@dataclass(frozen=True)
class Span:
    """One stretch of time (UTC) in which windows are open, with the zones it is told in."""

    start: datetime
    end: datetime
    start_zone: str
    end_zone: str

    def contains(self, at: datetime) -> bool:
        return self.start <= at < self.end


def parse_window(text: object) -> Window:
    """Parse one window like "Mon-Fri 22:00-01:00 UTC"; raise WindowError saying why not."""
    if not isinstance(text, str):
        raise WindowError(f'a window is text like "Sat 02:00-04:00 Europe/Berlin", not {text!r}')
    shown = repr(text[:MAX_TEXT])
    match = _WINDOW.match(text)
    if match is None:
        raise WindowError(
            f"{shown} is not a window: write days, start-end and a zone,"
            ' like "Sat 02:00-04:00 Europe/Berlin" or "Mon-Fri 22:00-01:00 UTC"'
        )
    days = _days(match["days"], shown)
    start = _minutes(match["start"], shown, end=False)
    end = _minutes(match["end"], shown, end=True)
    if start == end:
        raise WindowError(
            f"{shown}: the window starts and ends at the same time (a whole day is 00:00-24:00)"
        )
    zone = match["zone"]
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise WindowError(
            f"{shown}: {zone[:60]!r} is not an IANA time zone (like Europe/Berlin or UTC)"
        ) from None
    return Window(text=text.strip(), days=days, start=start, end=end, zone=zone)


def parse_windows(value: object) -> tuple[Window, ...]:
    """Parse a config's list of windows; raise WindowError naming the first bad one."""
    if not isinstance(value, list):
        raise WindowError(
            'windows must be a list of text like ["Sat 02:00-04:00 Europe/Berlin"],'
            f" not {str(value)[:MAX_TEXT]!r}"
        )
    return tuple(parse_window(item) for item in value)


def open_spans(windows: Sequence[Window], since: datetime, until: datetime) -> list[Span]:
    """Return the stretches between since and until in which any window is open, merged."""
    spans = sorted(
        (span for window in windows for span in window.spans(since, until)),
        key=lambda s: s.start,
    )
    merged: list[Span] = []
    for span in spans:
        if merged and span.start <= merged[-1].end:
            last = merged[-1]
            if span.end > last.end:
                merged[-1] = Span(last.start, span.end, last.start_zone, span.end_zone)
        else:
            merged.append(span)
    return merged


def current_span(windows: Sequence[Window], at: datetime) -> Span | None:
    """Return the open stretch at `at`, or None when every window is closed then."""
    return next((s for s in _ahead(windows, at) if s.contains(at)), None)


def is_open(windows: Sequence[Window], at: datetime) -> bool:
    """Say whether a window is open at `at` (an environment without windows always is)."""
    return not windows or current_span(windows, at) is not None


def remaining(windows: Sequence[Window], at: datetime) -> timedelta:
    """Return how long the window open at `at` stays open; zero when closed."""
    span = current_span(windows, at)
    return span.end - at if span is not None else timedelta(0)


def next_opening(windows: Sequence[Window], at: datetime) -> Span | None:
    """Return the next stretch that opens after `at` (not the one open now), or None."""
    return next((s for s in _ahead(windows, at) if s.start > at), None)


def earliest_start(
    windows: Sequence[Window], at: datetime, *, needs: float | None = None
) -> tuple[datetime, Span] | None:
    """Return the first moment from `at` on inside a window with `needs` seconds left in it.

    None when no window within the horizon is long enough (or there are no openings at all).
    """
    for span in _ahead(windows, at):
        start = max(span.start, at)
        if needs is None or (span.end - start).total_seconds() >= needs:
            return start, span
    return None


def describe(windows: Sequence[Window], at: datetime) -> str:
    """Say when the windows next let an action start: "open now until Sat 04:00 CET" or "next: …"."""
    if not windows:
        return ""
    span = current_span(windows, at)
    if span is not None:
        return f"open now until {wall_clock(span.end, span.end_zone, abbreviated=True)}"
    upcoming = next_opening(windows, at)
    if upcoming is None:
        return "no window opens in the next weeks"
    return (
        f"next: {wall_clock(upcoming.start, upcoming.start_zone)},"
        f" in {duration_text((upcoming.start - at).total_seconds())}"
    )


def wall_clock(moment: datetime, zone: str, *, abbreviated: bool = False) -> str:
    """Render an instant as its zone's wall clock: "Sat 02:00 Europe/Berlin" or "… CET"."""
    local = moment.astimezone(ZoneInfo(zone))
    name = local.tzname() if abbreviated else zone
    return f"{DAY_NAMES[local.weekday()].title()} {local:%H:%M} {name}"


def duration_text(seconds: float) -> str:
    """Render a length of time as people read it: "2 d 3 h", "45 min", "30 s"."""
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def _ahead(windows: Sequence[Window], at: datetime) -> Iterable[Span]:
    return open_spans(windows, at, at + HORIZON)


def _first_instant(zone: ZoneInfo, day: date, minutes: int) -> datetime:
    """Return the first UTC instant at which the zone's clock shows at least day + minutes."""
    wall = datetime.combine(day, time(0)) + timedelta(minutes=minutes)
    earlier = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _wall(earlier, zone) == wall:
        return earlier  # exists; for a time shown twice, fold=0 is its first showing
    # Skipped by a jump forward: fold=1 reads it with the later offset (an instant before the
    # jump), fold=0 with the earlier one (after it); the jump lies between.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = earlier
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if _wall(middle, zone) >= wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


def _days(text: str, shown: str) -> tuple[int, ...]:
    lowered = " ".join(text.lower().split())
    if lowered in _EVERY_DAY:
        return tuple(range(7))
    days: set[int] = set()
    for part in lowered.split(","):
        first, sep, last = part.strip().partition("-")
        start = _day(first, shown)
        if not sep:
            days.add(start)
            continue
        end = _day(last, shown)
        # "Fri-Mon" runs over the weekend.
        days.update((start + offset) % 7 for offset in range((end - start) % 7 + 1))
    return tuple(sorted(days))


def _day(text: str, shown: str) -> int:
    name = text.strip()
    if name in DAY_NAMES:
        return DAY_NAMES.index(name)
    if name in _FULL_NAMES:
        return _FULL_NAMES.index(name)
    raise WindowError(
        f"{shown}: {name[:40]!r} is not a day: use Mon, Tue, Wed, Thu, Fri, Sat, Sun,"
        ' ranges like "Mon-Fri", lists like "Sat,Sun", or "daily"'
    )


def _minutes(text: str, shown: str, *, end: bool) -> int:
    hour_text, _, minute_text = text.partition(":")  # the window pattern lets only H:MM by
    hour, minute = int(hour_text), int(minute_text)
    if end and (hour, minute) == (24, 0):
        return MINUTES_A_DAY
    if hour > 23 or minute > 59:
        raise WindowError(f"{shown}: {text} is not a time of day (00:00 to 23:59, or 24:00 to end)")
    return hour * 60 + minute
