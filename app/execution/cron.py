"""Cron times of a schedule: a 5-field expression read in an IANA time zone, answered in UTC.

Pure functions over `cronsim` (healthchecks.io's evaluator), which walks local wall-clock
times the way Debian's cron does across a DST change: a daily time that falls into the
skipped hour of spring-forward runs once at the first minute after the gap, and one in the
repeated hour of fall-back runs once (at its first occurrence); an hourly expression runs
once for each real hour, so the repeated hour runs twice, each at its own UTC instant. So a
DST change neither skips nor doubles a tick. Everything is computed from UTC instants
converted to the zone (zoneinfo sets `fold`), and stored in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

_ONE_MICROSECOND = timedelta(microseconds=1)


class InvalidScheduleError(ValueError):
    """A cron expression or time zone that cannot be used (the message says why)."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; InvalidScheduleError when there is none by that name."""
    if not name or name != name.strip() or name not in _zone_names():
        raise InvalidScheduleError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin or UTC"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidScheduleError(f"unknown time zone {name!r}") from exc


_ZONES: frozenset[str] | None = None


def _zone_names() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones()) | {"UTC"}
    return _ZONES


def validate(expression: str, timezone: str, now: datetime | None = None) -> datetime:
    """Check a 5-field cron expression and a time zone; return the first tick after `now` (UTC).

    Raises InvalidScheduleError with a message a user can act on (which field is wrong, or
    that the expression never fires).
    """
    fields = expression.split()
    if len(fields) != 5:
        raise InvalidScheduleError(
            f"cron must have 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}: "
            f"{expression!r}"
        )
    tz = zone(timezone)
    start = (now or datetime.now(UTC)).astimezone(tz)
    try:
        return next(CronSim(" ".join(fields), start)).astimezone(UTC)
    except CronSimError as exc:
        raise InvalidScheduleError(f"invalid cron expression {expression!r}: {exc}") from exc
    except StopIteration as exc:
        raise InvalidScheduleError(f"cron expression {expression!r} never fires") from exc
    except Exception as exc:  # any other parser failure on odd input is still the caller's input
        raise InvalidScheduleError(f"invalid cron expression {expression!r}") from exc


def next_after(expression: str, timezone: str, after: datetime) -> datetime | None:
    """The first tick strictly after `after` (UTC), or None when there is none any more."""
    try:
        return next(CronSim(expression, after.astimezone(zone(timezone)))).astimezone(UTC)
    except StopIteration:
        return None


def latest_at_or_before(expression: str, timezone: str, at: datetime) -> datetime | None:
    """The last tick at or before `at` (UTC): the one tick a schedule runs after missed ones."""
    start = (at + _ONE_MICROSECOND).astimezone(zone(timezone))
    try:
        return next(CronSim(expression, start, reverse=True)).astimezone(UTC)
    except StopIteration:
        return None
