"""`modctl serve [--once]`: keep the day's reminders until SIGINT/SIGTERM.

Reminders (booking due, booking overdue, calibration coming due or overdue) are printed to
stdout with a timestamp and appended to the audit trail as notes. APScheduler wakes the server
at each booking's time and overdue time; a periodic pass picks up bookings made meanwhile, the
next day, and the daily calibration check. Nothing here ever starts an output.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from controller.cli.clinic_common import add_clinic_options, clinic_command, open_store
from controller.cli.common import EXIT_OK
from controller.clinic import clock as clinic_time
from controller.clinic.reminders import Reminder, reminders_at, upcoming
from controller.clinic.roles import load_roles
from controller.records.store import RecordStore
from controller.session.scheduling import every, make_scheduler

# How often the server looks again for new bookings and the day's calibration state: a booking
# made for "now" is reminded within this, and so is the first check of a new day.
SYNC_PERIOD_S = 60.0
AUDIT_ACTION = "note.reminder"


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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="keep the day's reminders (bookings, calibrations)",
                       description="Print the day's reminders as they fall due and keep them "
                                   "in the audit trail: booking due, booking overdue (not "
                                   "started 10 min after), calibration due soon or overdue. "
                                   "Runs until Ctrl-C or SIGTERM. Starts no output.")
    p.add_argument("--once", action="store_true",
                   help="print the reminders that apply now and exit")
    add_clinic_options(p)
    p.set_defaults(run=clinic_command(_serve))


def _serve(args: argparse.Namespace) -> int:
    config = load_roles()
    actor = config.resolve(args.operator)
    with open_store(args) as store:
        reminders = Reminders(store, actor, config.clinic.calibration_warning_days)
        if args.once:
            if reminders.check() == 0:
                print("no reminders")
            return EXIT_OK
        stop = threading.Event()
        return serve(reminders, stop)


def serve(reminders: Reminders, stop: threading.Event) -> int:
    """Run until `stop` is set (SIGINT/SIGTERM set it when called from the main thread)."""
    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    main = threading.current_thread() is threading.main_thread()
    previous = ({s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
                if main else {})
    scheduler = make_scheduler()
    try:
        print(f"{clinic_time.stamp(reminders.clock())}  serving reminders for "
              f"{reminders.store.path} (Ctrl-C to stop)", flush=True)
        reminders.sync(scheduler)
        every(scheduler, SYNC_PERIOD_S, lambda: reminders.sync(scheduler), "reminders sync")
        scheduler.start()
        while not stop.wait(0.5):
            pass
    finally:
        scheduler.shutdown(wait=False)
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"{clinic_time.stamp(reminders.clock())}  stopped", file=sys.stderr)
    return EXIT_OK
