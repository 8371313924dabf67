"""Clinic times at the command line: typed in local time, stored in UTC, shown in local time.

`now()` is the one wall clock the booking commands and `modctl serve` read, so tests can replace
it. Nothing here ever times an output: sessions run on `time.monotonic()` (docs/design.md §2.3).

Typed dates and times are read by ASCII patterns of our own, never by `int()` or
`datetime.fromisoformat` on the raw text (both accept digits of other scripts, "٠٩:٣٠"), and
must lie in `allowed_days()`: year 9999 or year 1 would overflow the date arithmetic that follows
(the booking's end, the conversion to UTC) instead of being refused.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, timezone

# `--at 09:30` (today) or a full local date and time; seconds and an explicit offset optional.
# ASCII digits only ([0-9], not \d, which matches every script's digits).
_CLOCK = re.compile(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?")
_DAY = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_MOMENT = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{1,2}):([0-9]{2})"
                     r"(?::([0-9]{2}))?(Z|[+-][0-9]{2}:?[0-9]{2})?")
_FORMS = "HH:MM (today), YYYY-MM-DDTHH:MM or 'YYYY-MM-DD HH:MM' (local time)"
# No clinic record predates this day; it also keeps every conversion to UTC inside the range
# Python's datetime can hold.
EARLIEST_DAY = date(2000, 1, 1)
# Bookings are made at most this far ahead; a later date is a typing mistake.
BOOKING_HORIZON_DAYS = 366


class TimeError(ValueError):
    """A time or day typed at the command line that is not understood; names the option."""


def now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def allowed_days() -> tuple[date, date]:
    """The first and last local day a typed date may name (read at each call: `now()`)."""
    return EARLIEST_DAY, local_day(now()) + timedelta(days=BOOKING_HORIZON_DAYS)


def parse_at(text: str, option: str = "--at", *, today: date | None = None) -> datetime:
    """A local time of day (today) or local date and time, as an aware UTC datetime."""
    _no_spaces_around(text, option)
    clock, moment = _CLOCK.fullmatch(text), _MOMENT.fullmatch(text)
    if clock is None and moment is None:
        raise TimeError(f"{option} '{text}' is not a time: give {_FORMS}")
    try:
        if clock is not None:
            hour, minute, second = (int(g or 0) for g in clock.groups())
            day = today or local_day(now())
            zone = None
        else:
            assert moment is not None
            y, mo, d, hour, minute, second = (int(g or 0) for g in moment.groups()[:6])
            day = date(y, mo, d)
            zone = _zone(moment.group(7))
        _in_range(day, text, option)
        value = datetime.combine(day, time(hour, minute, second), tzinfo=zone)
    except ValueError as exc:  # month 13, 25:00, offset +25:00
        if isinstance(exc, TimeError):
            raise
        raise TimeError(f"{option} '{text}' is not a time ({exc}): give {_FORMS}") from None
    return value.astimezone(UTC)  # a naive time is local: astimezone() reads the OS zone


def parse_day(text: str, option: str = "--day") -> date:
    _no_spaces_around(text, option)
    match = _DAY.fullmatch(text)
    try:
        if match is None:
            raise ValueError("not YYYY-MM-DD")
        day = date(*(int(g) for g in match.groups()))
    except ValueError:
        raise TimeError(f"{option} '{text}' is not a day: give YYYY-MM-DD") from None
    _in_range(day, text, option)
    return day


def _no_spaces_around(text: str, option: str) -> None:
    if text != text.strip():
        raise TimeError(f"{option} '{text}' has spaces around it: give the date or time alone")


def _zone(offset: str | None) -> timezone | None:
    if offset is None:
        return None
    if offset == "Z":
        return UTC
    sign = -1 if offset[0] == "-" else 1
    digits = offset[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))


def _in_range(day: date, text: str, option: str) -> None:
    first, last = allowed_days()
    if not first <= day <= last:
        raise TimeError(f"{option} '{text}' is out of range: give a day from {first} to {last} "
                        f"(bookings are made at most {BOOKING_HORIZON_DAYS} days ahead)")


def local_day(moment: datetime) -> date:
    return moment.astimezone().date()


def show(moment: datetime, with_date: bool = True) -> str:
    """Local time for people: `2026-12-01 09:30` or `09:30`."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M" if with_date else "%H:%M")


def stamp(moment: datetime) -> str:
    """Local time with seconds and offset, for reminder lines."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def show_duration(seconds: float) -> str:
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "",
             f"{secs}s" if secs or not whole else ""]
    return "".join(parts)
