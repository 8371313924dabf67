"""The day's reminders for `modctl serve`: bookings due and overdue, calibrations coming due.

`reminders_at(store, now, ...)` is pure evaluation (what applies at `now`); `modctl serve` emits
each one once and schedules the moments still to come. A reminder never starts anything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from controller.clinic import clock as clinic_time
from controller.clinic.bookings import load_profile
from controller.clinic.clock import local_day, show, show_duration
from controller.records.clinic_tables import BookingRow
from controller.records.store import RecordStore

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

# A booking not started this long after its time is reported overdue.
OVERDUE_AFTER = timedelta(minutes=10)
BOOKING_DUE = "booking due"
BOOKING_OVERDUE = "booking overdue"
CALIBRATION_DUE = "calibration due soon"
CALIBRATION_OVERDUE = "calibration overdue"
AUDIT_ACTION = "note.reminder"


@dataclass(frozen=True)
class Reminder:
    kind: str
    subject: str
    """`booking/12` or `device/heat-1`: the audit subject."""
    due_at: datetime
    """The moment it applies from (a booking's time; the check time for calibrations)."""
    text: str

    def key(self) -> tuple[str, str, date]:
        """Each reminder is emitted once; calibration ones once a day."""
        return self.kind, self.subject, local_day(self.due_at)


def booking_reminder(booking: BookingRow, now: datetime) -> Reminder | None:
    """Due from its start time, overdue from `OVERDUE_AFTER` later, while still booked."""
    if booking.status != "booked" or now < booking.starts_at:
        return None
    what = f"plan {booking.plan}" if booking.plan else (booking.profile or "")
    base = (f"booking {booking.id} at {show(booking.starts_at, False)}: patient "
            f"{booking.patient}, {','.join(booking.devices.values())}, {what} "
            f"({show_duration(booking.duration_s)})")
    late = booking.starts_at + OVERDUE_AFTER
    if now >= late:
        minutes = int((now - booking.starts_at).total_seconds() // 60)
        return Reminder(BOOKING_OVERDUE, f"booking/{booking.id}", late,
                        f"{base}: not started, {minutes} min late (modctl book start "
                        f"{booking.id}, or book cancel {booking.id})")
    return Reminder(BOOKING_DUE, f"booking/{booking.id}", booking.starts_at,
                    f"{base}: due now (modctl book start {booking.id})")


def calibration_reminders(store: RecordStore, now: datetime, warn_days: int) -> list[Reminder]:
    """Registered devices whose calibration is overdue or falls due within `warn_days`."""
    out: list[Reminder] = []
    today = local_day(now)
    for device in store.devices():
        subject = f"device/{device.name}"
        profile = load_profile(device.profile)
        if isinstance(profile, str):
            out.append(Reminder(CALIBRATION_OVERDUE, subject, now,
                                f"device {device.name}: its calibration cannot be checked: "
                                f"{profile}"))
            continue
        if profile.calibration is None:
            continue
        status = store.calibration_status(device.name, now)
        if status.overdue:
            out.append(Reminder(CALIBRATION_OVERDUE, subject, now,
                                f"device {device.name} ({profile.id}): {status.reason}; "
                                "sessions and bookings on it are refused until a technician "
                                f"calibrates it (modctl calibrate {device.name})"))
        elif status.next_due is not None and status.next_due <= today + timedelta(warn_days):
            days = (status.next_due - today).days
            when = "today" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
            out.append(Reminder(CALIBRATION_DUE, subject, now,
                                f"device {device.name} ({profile.id}): calibration due {when} "
                                f"({status.next_due}); book a technician"))
    return out


def reminders_at(store: RecordStore, now: datetime, warn_days: int) -> list[Reminder]:
    """Everything that applies at `now`: today's bookings past their time, and calibrations."""
    found = [r for b in store.bookings(local_day(now), statuses=("booked",))
             if (r := booking_reminder(b, now)) is not None]
    return found + calibration_reminders(store, now, warn_days)


def upcoming(store: RecordStore, now: datetime) -> list[tuple[datetime, int]]:
    """The moments still to come today (booking times and overdue times) with booking ids."""
    out: list[tuple[datetime, int]] = []
    for b in store.bookings(local_day(now), statuses=("booked",)):
        out += [(t, b.id) for t in (b.starts_at, b.starts_at + OVERDUE_AFTER) if t > now]
    return sorted(out)


class Reminders:
    """Emits each reminder once (print + audit); safe from scheduler threads."""

    def __init__(self, store: RecordStore, actor: str, warn_days: int,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.actor = actor
        self.warn_days = warn_days
        # Looked up at each call, so a test can replace clinic_time.now.
        self.clock = clock or (lambda: clinic_time.now())
        self._sent: set[tuple[object, ...]] = set()
        self._scheduled: set[tuple[int, datetime]] = set()
        self._lock = threading.Lock()

    def check(self) -> int:
        """Emit what applies now and is not yet emitted; returns how many were emitted."""
        now = self.clock()
        fresh = []
        with self._lock:
            for reminder in reminders_at(self.store, now, self.warn_days):
                if reminder.key() not in self._sent:
                    self._sent.add(reminder.key())
                    fresh.append(reminder)
        for reminder in fresh:
            self.emit(reminder, now)
        return len(fresh)

    def emit(self, reminder: Reminder, now: datetime) -> None:
        print(f"{clinic_time.stamp(now)}  {reminder.kind}: {reminder.text}", flush=True)
        self.store.audit(self.actor, AUDIT_ACTION, reminder.subject,
                         {"reminder": reminder.kind, "text": reminder.text,
                          "due_at": reminder.due_at.isoformat()})

    def schedule(self, scheduler: BackgroundScheduler) -> None:
        """A wake-up at each of today's booking moments still to come (once each)."""
        for moment, booking_id in upcoming(self.store, self.clock()):
            with self._lock:
                if (booking_id, moment) in self._scheduled:
                    continue
                self._scheduled.add((booking_id, moment))
            scheduler.add_job(self.check, "date", run_date=moment,
                              name=f"booking {booking_id} reminder")

    def sync(self, scheduler: BackgroundScheduler) -> None:
        self.check()
        self.schedule(scheduler)
