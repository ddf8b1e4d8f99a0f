"""Maintenance windows: parsing, open or closed, next opening and time left, across DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dashboard.config.windows import (
    WindowError,
    current_span,
    describe,
    duration_text,
    earliest_start,
    is_open,
    next_opening,
    parse_window,
    parse_windows,
    remaining,
)


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_days_times_and_zone_are_read() -> None:
    window = parse_window("Mon-Fri 22:00-01:00 UTC")
    assert (window.days, window.start, window.end, window.zone) == (
        (0, 1, 2, 3, 4),
        22 * 60,
        60,
        "UTC",
    )
    assert parse_window("Fri-Mon 01:00-02:00 UTC").days == (0, 4, 5, 6)  # over the weekend
    assert parse_window("sat,Sunday 00:00-24:00 Asia/Tokyo").days == (5, 6)
    assert parse_window("daily 03:00-04:00 America/New_York").days == tuple(range(7))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Sat 02:00-04:00", "is not a window: write days, start-end and a zone"),
        ("Sat 2am-4am Europe/Berlin", "is not a window"),
        ("Sa 02:00-04:00 UTC", "'sa' is not a day"),
        ("Sat 24:00-04:00 UTC", "24:00 is not a time of day"),
        ("Sat 02:61-04:00 UTC", "02:61 is not a time of day"),
        ("Sat 02:00-02:00 UTC", "starts and ends at the same time"),
        ("Sat 02:00-04:00 Mars/Olympus", "'Mars/Olympus' is not an IANA time zone"),
        ("Sat 02:00-04:00 Europe", "'Europe' is not an IANA time zone"),
        ("Sat 02:00-04:00 ../../etc/passwd", "is not an IANA time zone"),
    ],
)
def test_a_malformed_window_says_what_is_wrong_and_quotes_it(text: str, message: str) -> None:
    with pytest.raises(WindowError, match=message) as refused:
        parse_window(text)
    assert repr(text) in str(refused.value)


def test_windows_must_be_a_list_of_text() -> None:
    with pytest.raises(WindowError, match="windows must be a list"):
        parse_windows("Sat 02:00-04:00 UTC")
    with pytest.raises(WindowError, match="a window is text"):
        parse_windows([3])


def test_a_span_across_midnight_is_open_on_both_sides_and_ends_the_next_day() -> None:
    windows = parse_windows(["Mon-Fri 22:00-01:00 UTC"])
    friday_night = at(2027, 1, 8, 23, 30)
    assert is_open(windows, friday_night)
    assert is_open(windows, at(2027, 1, 9, 0, 59))  # Saturday morning, still Friday's window
    assert not is_open(windows, at(2027, 1, 9, 1, 0))  # the end is not inside
    assert not is_open(windows, at(2027, 1, 9, 23, 0))  # no Saturday window
    assert remaining(windows, friday_night) == timedelta(minutes=90)
    assert remaining(windows, at(2027, 1, 9, 12)) == timedelta(0)
    upcoming = next_opening(windows, at(2027, 1, 9, 12))
    assert upcoming is not None and (upcoming.start, upcoming.end) == (
        at(2027, 1, 11, 22),
        at(2027, 1, 12, 1),
    )


def test_overlapping_and_touching_windows_count_as_one_stretch() -> None:
    windows = parse_windows(["Fri 22:00-24:00 UTC", "Sat 00:00-03:00 UTC", "Sat 01:00-02:00 UTC"])
    span = current_span(windows, at(2027, 1, 8, 23))
    assert span is not None and (span.start, span.end) == (at(2027, 1, 8, 22), at(2027, 1, 9, 3))
    assert remaining(windows, at(2027, 1, 8, 23)) == timedelta(hours=4)


def test_zones_put_the_window_at_its_local_time() -> None:
    windows = parse_windows(["Sat 02:00-04:00 Europe/Berlin"])
    # January: CET, UTC+1.  July: CEST, UTC+2.
    assert is_open(windows, at(2027, 1, 9, 1, 0)) and not is_open(windows, at(2027, 1, 9, 0, 59))
    assert is_open(windows, at(2027, 7, 3, 0, 0)) and not is_open(windows, at(2027, 7, 3, 2, 0))


def test_a_start_skipped_by_the_spring_jump_opens_at_the_jump() -> None:
    # 2027-03-28: Berlin's clocks go from 02:00 CET straight to 03:00 CEST (01:00 UTC).
    windows = parse_windows(["Sun 02:30-04:00 Europe/Berlin"])
    span = next_opening(windows, at(2027, 3, 27, 12))
    assert span is not None
    assert (span.start, span.end) == (at(2027, 3, 28, 1, 0), at(2027, 3, 28, 2, 0))
    assert remaining(windows, at(2027, 3, 28, 1, 0)) == timedelta(hours=1)
    # A window wholly inside the skipped hour does not happen that day.
    skipped = parse_windows(["Sun 02:10-02:50 Europe/Berlin"])
    assert next_opening(skipped, at(2027, 3, 27, 12)).start == at(2027, 4, 4, 0, 10)


def test_an_ambiguous_start_on_the_autumn_day_opens_at_its_first_showing() -> None:
    # 2027-10-31: Berlin shows 02:00-03:00 twice (CEST, then CET from 01:00 UTC).
    windows = parse_windows(["Sun 02:30-04:00 Europe/Berlin"])
    span = next_opening(windows, at(2027, 10, 30, 12))
    assert span is not None
    assert (span.start, span.end) == (at(2027, 10, 31, 0, 30), at(2027, 10, 31, 3, 0))
    assert span.end - span.start == timedelta(hours=2, minutes=30)  # the clock showed an hour twice
    # The week after, the same window is the usual 90 minutes.
    later = next_opening(windows, span.end)
    assert later is not None and later.end - later.start == timedelta(minutes=90)


def test_a_span_over_a_transition_in_new_york_keeps_its_wall_clock_ends() -> None:
    # 2027-03-14: New York jumps from 02:00 EST to 03:00 EDT; 01:00-04:00 is two real hours.
    windows = parse_windows(["Sun 01:00-04:00 America/New_York"])
    span = next_opening(windows, at(2027, 3, 13, 12))
    assert span is not None
    assert (span.start, span.end) == (at(2027, 3, 14, 6, 0), at(2027, 3, 14, 8, 0))


def test_earliest_start_skips_windows_too_short_for_the_forecast() -> None:
    windows = parse_windows(["Sat 02:00-03:00 UTC", "Sun 02:00-06:00 UTC"])
    saturday = at(2027, 1, 9, 2, 30)
    assert earliest_start(windows, saturday)[0] == saturday  # open now: start now
    assert earliest_start(windows, saturday, needs=1800)[0] == saturday  # just fits
    start, span = earliest_start(windows, saturday, needs=1801)
    assert start == at(2027, 1, 10, 2)
    assert span.end == at(2027, 1, 10, 6)
    assert earliest_start(windows, saturday, needs=5 * 3600) is None  # longer than any window


def test_the_next_window_is_described_for_people() -> None:
    windows = parse_windows(["Sat 02:00-04:00 Europe/Berlin"])
    assert describe(windows, at(2027, 1, 9, 1, 30)) == "open now until Sat 04:00 CET"
    assert describe(windows, at(2027, 1, 6, 22)) == "next: Sat 02:00 Europe/Berlin, in 2 d 3 h"
    assert describe(windows, at(2027, 1, 9, 0, 15)) == "next: Sat 02:00 Europe/Berlin, in 45 min"
    assert describe((), at(2027, 1, 9)) == ""
    assert duration_text(3 * 3600 + 20 * 60) == "3 h 20 min"
