"""Dates, times and durations typed for bookings: ASCII digits, a named range, clean errors.

Year 9999 used to end in "internal error: OverflowError" (the booking's end, the conversion to
UTC), year 1 in ValueError, and `int()` read "٠٩:٣٠" as 09:30. Every one is a usage error
(exit 2) that names the value and the allowed range (issue 10, item 7).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from controller.cli import book_cmd
from controller.clinic import clock as clinic_time
from controller.clinic.clock import BOOKING_HORIZON_DAYS, EARLIEST_DAY, TimeError
from controller.records.store import RecordStore
from tests.test_bookings import register
from tests.test_devices_cli import NOW, calibrate, clinic, modctl

LAST_DAY = NOW.astimezone().date() + timedelta(days=BOOKING_HORIZON_DAYS)
RANGE = f"give a day from {EARLIEST_DAY} to {LAST_DAY}"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = clinic(tmp_path, monkeypatch)
    register(db, ("heat-1", "hc-200", "/dev/pts/91"))
    return db


def book(at: str, duration: str = "15m") -> int:
    return modctl("book", "add", "--device", "heat-1", "--profile", "hc-200", "--set",
                  "temperature_c=40", "--duration", duration, "--at", at, "--patient",
                  "P-0042", "--operator", "alice")


@pytest.mark.parametrize(("at", "message"), [
    ("9999-12-31T23:59", f"--at '9999-12-31T23:59' is out of range: {RANGE}"),
    ("0001-01-01T00:00", f"--at '0001-01-01T00:00' is out of range: {RANGE}"),
    ("2032-01-01 09:00", "bookings are made at most 366 days ahead"),
    ("٠٩:٣٠", "is not a time"),                       # Arabic-Indic digits
    ("２０３０-03-04T09:30", "is not a time"),         # full-width digits
    ("2030-03-04T٠٩:30", "is not a time"),
    ("09:30 ", "has spaces around it"),
    ("2030-13-04T09:30", "is not a time (month must be in 1..12)"),
    ("2030-03-04T25:00", "is not a time (hour must be in 0..23)"),
    ("2030-03-04T09:30+25:00", "is not a time"),
])
def test_bad_times_are_usage_errors_naming_the_value(
        db: Path, capsys: pytest.CaptureFixture[str], at: str, message: str) -> None:
    assert book(at) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "internal error" not in err and "Traceback" not in err
    with RecordStore(db) as store:
        assert store.bookings() == []


def test_times_in_range_still_book(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calibrate(db, "heat-1", due=LAST_DAY + timedelta(days=1))
    assert book("09:30") == 0
    assert book(f"{LAST_DAY}T09:00") == 0   # the last day of the horizon
    assert book("2030-03-05T08:30+00:00") == 0  # an explicit offset
    with RecordStore(db) as store:
        times = [b.starts_at for b in store.bookings()]
    assert datetime(2030, 3, 5, 8, 30, tzinfo=UTC) in times


@pytest.mark.parametrize(("day", "message"), [
    ("9999-12-31", f"--day '9999-12-31' is out of range: {RANGE}"),
    ("0001-01-01", f"--day '0001-01-01' is out of range: {RANGE}"),
    ("٢٠٣٠-03-04", "is not a day"),
    ("2030-02-30", "is not a day"),
])
def test_bad_days_are_usage_errors(db: Path, capsys: pytest.CaptureFixture[str], day: str,
                                   message: str) -> None:
    assert modctl("book", "list", "--day", day) == 2
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err


@pytest.mark.parametrize("duration", ["99999999999999", "13h"])
def test_a_booking_longer_than_a_clinic_day_is_a_usage_error(
        db: Path, capsys: pytest.CaptureFixture[str], duration: str) -> None:
    # A plan booking's --duration is not bounded by a prescription: it used to overflow.
    assert modctl("book", "add", "--device", "heat-1", "--plan", "acute-ankle-sprain",
                  "--duration", duration, "--at", "2030-03-04T09:30", "--patient", "P-0042",
                  "--operator", "alice") == 2
    err = capsys.readouterr().err
    assert f"--duration '{duration}' is out of range: a booking holds its devices for at " \
           "most 12h" in err and "internal error" not in err
    assert book_cmd.MAX_BOOKING_S == 12 * 3600


def test_parse_at_reads_ascii_patterns_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clinic_time, "now", lambda: NOW)
    today = date(2030, 3, 4)
    assert clinic_time.parse_at("9:05", today=today) == \
        datetime(2030, 3, 4, 9, 5).astimezone(UTC)
    assert clinic_time.parse_at("2030-03-04T09:30Z") == datetime(2030, 3, 4, 9, 30, tzinfo=UTC)
    for text in ("٠٩:٣٠", "09:30:٠٠", "0９:30", "2030-03-04T09:30:00.5", "2030-03-04"):
        with pytest.raises(TimeError):
            clinic_time.parse_at(text, today=today)
