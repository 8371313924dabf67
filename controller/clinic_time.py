"""Clinic times at the command line: typed in local time, stored in UTC, shown in local time.

`now()` is the one wall clock the booking commands and `modctl serve` read, so tests can replace
it. Nothing here ever times an output: sessions run on `time.monotonic()` (DESIGN §2.3).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time

# `--at 09:30` (today) or a full local date and time; seconds and an explicit offset optional.
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")
_FORMS = "HH:MM (today), YYYY-MM-DDTHH:MM or 'YYYY-MM-DD HH:MM' (local time)"


class TimeError(ValueError):
    """A time or day typed at the command line that is not understood; names the option."""


def now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def parse_at(text: str, option: str = "--at", *, today: date | None = None) -> datetime:
    """A local time of day (today) or local date and time, as an aware UTC datetime."""
    t = text.strip()
    clock = _CLOCK.fullmatch(t)
    try:
        if clock:
            hour, minute, second = (int(g or 0) for g in clock.groups())
            base = today or now().astimezone().date()
            moment = datetime.combine(base, time(hour, minute, second))
        else:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}.*", t):
                raise ValueError
            moment = datetime.fromisoformat(t)
    except ValueError:
        raise TimeError(f"{option} '{text}' is not a time: give {_FORMS}") from None
    return moment.astimezone(UTC)  # a naive time is local: astimezone() reads the OS zone


def parse_day(text: str, option: str = "--day") -> date:
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
            raise ValueError
        return date.fromisoformat(text.strip())
    except ValueError:
        raise TimeError(f"{option} '{text}' is not a day: give YYYY-MM-DD") from None


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
