"""Cron ticks in a time zone: a DST change neither skips nor doubles one; bad input says why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.execution import cron


def ticks(expression: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """Every tick in (start, end], as the schedule walks them: each from the one before."""
    out: list[datetime] = []
    moment = start
    while True:
        nxt = cron.next_after(expression, zone, moment)
        assert nxt is not None
        if nxt > end:
            return out
        out.append(nxt)
        moment = nxt


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_a_daily_time_in_the_skipped_hour_of_spring_forward_runs_once_right_after_the_gap():
    # Europe/Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    got = ticks("30 2 * * *", "Europe/Berlin", utc(2026, 3, 27, 12), utc(2026, 3, 31, 12))
    assert got == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST, the first minute after the gap
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
        utc(2026, 3, 31, 0, 30),
    ]


def test_a_daily_time_in_the_repeated_hour_of_fall_back_runs_once():
    # Europe/Berlin 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    got = ticks("30 2 * * *", "Europe/Berlin", utc(2026, 10, 23, 12), utc(2026, 10, 27, 12))
    assert got == [
        utc(2026, 10, 24, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first of the two; not again at 01:30 UTC
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
        utc(2026, 10, 27, 1, 30),
    ]


def test_an_hourly_schedule_runs_every_real_hour_across_fall_back():
    got = ticks("0 * * * *", "America/New_York", utc(2026, 11, 1, 3, 30), utc(2026, 11, 1, 9, 30))
    # New York 2026-11-01: 02:00 EDT goes back to 01:00 EST. One tick per real hour, none twice.
    assert got == [utc(2026, 11, 1, h) for h in range(4, 10)]
    assert len(set(got)) == len(got)


def test_an_hourly_schedule_skips_no_real_hour_across_spring_forward():
    got = ticks("0 * * * *", "America/New_York", utc(2026, 3, 8, 4, 30), utc(2026, 3, 8, 9, 30))
    assert got == [utc(2026, 3, 8, h) for h in range(5, 10)]


def test_the_latest_tick_at_or_before_a_moment_is_the_one_run_after_missed_ticks():
    at = utc(2026, 1, 1, 10, 0)
    assert cron.latest_at_or_before("*/5 * * * *", "UTC", at) == at
    assert cron.latest_at_or_before("*/5 * * * *", "UTC", at + timedelta(minutes=4)) == at
    assert cron.latest_at_or_before("30 2 * * *", "Europe/Berlin", utc(2026, 3, 29, 1, 30)) == utc(
        2026, 3, 29, 1, 0
    )


def test_validate_returns_the_first_tick_after_now_in_utc():
    now = utc(2026, 6, 1, 5, 10)
    assert cron.validate("30 7 * * *", "Europe/Berlin", now) == utc(2026, 6, 1, 5, 30)


@pytest.mark.parametrize(
    ("expression", "zone", "says"),
    [
        ("* * * *", "UTC", "5 fields"),
        ("*/5 * * * * *", "UTC", "5 fields"),
        ("@daily", "UTC", "5 fields"),
        ("61 * * * *", "UTC", "Bad minute"),
        ("0 0 30 2 *", "UTC", "invalid cron expression"),
        ("0 7 * * *", "Mars/Olympus", "unknown time zone"),
        ("0 7 * * *", "../etc/passwd", "unknown time zone"),
        ("0 7 * * *", " UTC", "unknown time zone"),
    ],
)
def test_a_bad_expression_or_zone_is_refused_with_a_reason(expression: str, zone: str, says: str):
    with pytest.raises(cron.InvalidScheduleError, match=says):
        cron.validate(expression, zone)
