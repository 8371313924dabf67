"""`modctl book add | list | cancel | start`: book registered devices for patients.

A booking never starts an output by itself: `book start ID` starts it when the clinician is with
the patient, after checking everything again at that moment. Rules: docs/bookings.md.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import TYPE_CHECKING

from controller.cli.clinic_common import (
    add_clinic_options,
    clinic_command,
    db_exists,
    open_store,
    positive_id,
    refused,
    require_booking,
    require_device,
    require_plan_ref,
    require_profile_ref,
)
from controller.cli.common import EXIT_INTERNAL, EXIT_OK, EXIT_REJECTED, UsageError, error
from controller.cli.table import print_table
from controller.clinic import clock as clinic_time

if TYPE_CHECKING:
    from controller.clinic import bookings as rules
    from controller.plans.plan import Plan
    from controller.records.clinic_tables import BookingRow
    from controller.session.service import SessionStarter

# The booking rules, plans and the session stack are imported by the subcommand that needs
# them: `book list` starts without them.

# A plan booking holds its devices for the plan's steps and pauses plus this per step: moving
# the patient, changing applicators, checking the skin.
PLAN_STEP_SETUP_S = 2 * 60.0
# The longest a booking may hold devices: a clinic day. Longer is a typing mistake, and a
# duration past what a datetime can add (1e14 s) would otherwise overflow the booking's end.
MAX_BOOKING_S = 12 * 3600.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("book", help="book registered devices for patients",
                       description="Bookings of registered devices for a patient and a time. "
                                   "A booking never starts an output by itself. Exit status: "
                                   "0 done, 1 records unusable, 2 usage error, 3 refused.")
    bs = p.add_subparsers(dest="book_cmd", required=True, metavar="COMMAND")
    add = bs.add_parser("add", help="book a device (clinician)",
                        description="Book a device for a patient: a plan, or one session of "
                                    "the device's profile with its settings and duration.")
    add.add_argument("--device", dest="devices", action="append", required=True,
                     metavar="NAME",
                     help="a registered device (repeatable); a plan booking names one per "
                          "device role of the plan, as ROLE=NAME when its profile does not "
                          "say which role")
    what = add.add_mutually_exclusive_group(required=True)
    what.add_argument("--plan", metavar="PLAN", help="a treatment plan file or preset name")
    what.add_argument("--profile", metavar="PROFILE",
                      help="the device's profile (must match its registration)")
    add.add_argument("--set", dest="settings", action="append", default=[],
                     metavar="NAME=VALUE", help="a prescription parameter (repeatable)")
    add.add_argument("--duration", metavar="DUR",
                     help="session length (90s, 15m); for a plan, how long to hold its "
                          "devices (default: the plan's steps and pauses, plus "
                          f"{PLAN_STEP_SETUP_S / 60:g} min per step)")
    add.add_argument("--at", required=True, metavar="TIME",
                     help="local time: 09:30 (today) or 2026-12-01T09:30")
    add.add_argument("--patient", required=True, metavar="ID",
                     help="pseudonymous patient id (like P-0042), never a name")
    add_clinic_options(add)
    add.set_defaults(run=clinic_command(_add))
    ls = bs.add_parser("list", help="bookings of a day (default today)",
                       description="List bookings, earliest first: today's by default.")
    ls.add_argument("--day", metavar="YYYY-MM-DD", help="bookings starting on this local day")
    ls.add_argument("--all", action="store_true", help="every booking, any day")
    ls.add_argument("--patient", metavar="ID", help="only this patient's bookings")
    add_clinic_options(ls, operator=False)
    ls.set_defaults(run=clinic_command(_list))
    cancel = bs.add_parser("cancel", help="cancel a booking (clinician)",
                           description="Cancel a booking that has not started.")
    cancel.add_argument("booking_id", type=positive_id, metavar="ID",
                        help="the booking's number (modctl book list)")
    cancel.add_argument("--reason", default="", metavar="TEXT", help="why (kept in the audit)")
    add_clinic_options(cancel)
    cancel.set_defaults(run=clinic_command(_cancel))
    start = bs.add_parser(
        "start", help="start a booking now (clinician, with the patient)",
        description="Start a booking now: checks the device, its calibration, the limits and "
                    "the patient's interval again, then runs the session like `session run` "
                    "(same exit statuses: 0 completed, 3 rejected, 4 stopped, 5 fault).")
    start.add_argument("booking_id", type=positive_id, metavar="ID",
                       help="the booking's number (modctl book list)")
    start.add_argument("--json", action="store_true",
                       help="print the session report as JSON on the last line of stdout")
    add_clinic_options(start)
    start.set_defaults(run=clinic_command(_start))


def _add(args: argparse.Namespace) -> int:
    from controller.calibration.gate import profile_mismatch
    from controller.clinic import bookings as rules
    from controller.clinic.roles import load_roles
    from controller.modality.prescription import parse_duration, parse_settings
    patient = rules.check_patient_id(args.patient)
    starts_at = clinic_time.parse_at(args.at)
    settings = parse_settings(args.settings)
    if args.plan is not None and settings:
        raise UsageError("--set: a plan booking takes its settings from the plan")
    if args.plan is None and args.duration is None:
        raise UsageError("--duration is required when booking a session with --profile")
    duration = parse_duration(args.duration) if args.duration is not None else None
    if duration is not None and duration > MAX_BOOKING_S:
        raise UsageError(f"--duration '{args.duration}' is out of range: a booking holds its "
                         f"devices for at most {clinic_time.show_duration(MAX_BOOKING_S)}")
    config = load_roles()
    operator = config.require("clinician", args.operator, "book a device")
    interval_s = config.clinic.min_interval_hours * 3600
    plan: Plan | None = None
    if args.plan is not None:
        require_plan_ref(args.plan)
        loaded = rules.load_plan_or_reasons(args.plan)
        if isinstance(loaded, list):
            return _refuse_all(loaded)
        plan = loaded
        needed = plan.treatment_s() + plan.pauses_s()
        if duration is not None and duration < needed:
            return refused(f"--duration {clinic_time.show_duration(duration)} is shorter than "
                           f"the plan's own {clinic_time.show_duration(needed)}")
        if duration is None:
            duration = needed + PLAN_STEP_SETUP_S * len(plan.steps)
        if duration > MAX_BOOKING_S:
            most = clinic_time.show_duration(MAX_BOOKING_S)
            return refused(f"the plan holds its devices for "
                           f"{clinic_time.show_duration(duration)}, more than a booking may "
                           f"({most})")
    assert duration is not None
    if args.profile is not None:
        require_profile_ref(args.profile)
    with open_store(args) as store:
        for given in args.devices:
            require_device(store, given.partition("=")[2].strip() if "=" in given
                           else given.strip())
        found = rules.booked_devices(store, args.devices, plan)
        if isinstance(found, list):
            return _refuse_all(found)
        reasons: list[str] = []
        if args.profile is not None:
            device = found[rules.PROFILE_ROLE][0]
            wanted = rules.load_profile(args.profile)
            mismatch = (wanted if isinstance(wanted, str)
                        else profile_mismatch(device.profile, wanted))
            if mismatch:
                reasons.append(f"--profile {args.profile}: device '{device.name}' {mismatch}")
        reasons += rules.check_new_booking(
            store, found, settings=settings, is_plan=plan is not None, duration_s=duration,
            starts_at=starts_at, patient=patient, now=clinic_time.now(),
            min_interval_s=interval_s)
        if reasons:
            return _refuse_all(reasons)
        booking = store.add_booking(
            devices={role: dev.name for role, (dev, _) in found.items()},
            profile=None if plan is not None else found[rules.PROFILE_ROLE][0].profile,
            plan=args.plan, settings=settings,
            modalities=[prof.modality for _, prof in found.values()], patient=patient,
            starts_at=starts_at, duration_s=duration, actor=operator,
            min_interval_s=interval_s, profiles=_profile_files(found))
    print(f"booked {booking.id}: {_line(booking)}")
    return EXIT_OK


def _refuse_all(reasons: list[str]) -> int:
    for reason in reasons:
        error(f"refused: {reason}")
    return EXIT_REJECTED


def _list(args: argparse.Namespace) -> int:
    if args.all and args.day:
        raise UsageError("--day and --all: give one of them")
    day = None if args.all else (clinic_time.parse_day(args.day) if args.day
                                 else clinic_time.local_day(clinic_time.now()))
    if not db_exists(args):
        print("no bookings")
        return EXIT_OK
    with open_store(args, create=False) as store:
        found = store.bookings(day, patient=args.patient)
    if not found:
        print("no bookings" + (f" on {day}" if day else ""))
        return EXIT_OK
    print_table(("ID", "TIME", "DEVICE", "PATIENT", "WHAT", "DURATION", "STATUS", "BY"),
                [(b.id, clinic_time.show(b.starts_at, with_date=day is None), _devices(b),
                  b.patient, _what(b), clinic_time.show_duration(b.duration_s), b.status,
                  b.created_by) for b in found], right=(0,))
    return EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    from controller.clinic.roles import load_roles
    operator = load_roles().require("clinician", args.operator, "cancel a booking")
    with open_store(args, create=False) as store:
        require_booking(store, args.booking_id)
        booking = store.cancel_booking(args.booking_id, operator, args.reason)
    print(f"cancelled booking {booking.id}: {_line(booking)}")
    return EXIT_OK


def _start(args: argparse.Namespace) -> int:
    from controller.cli.session_cmd import clinic_rules, note_interrupted, print_report, run_session
    from controller.clinic import bookings as rules
    from controller.clinic.roles import load_roles
    from controller.session.service import SessionStarter
    config = load_roles()
    operator = config.require("clinician", args.operator, "start a treatment")
    with open_store(args, create=False) as store:
        booking = require_booking(store, args.booking_id)
        if booking.status != "booked":
            return refused(f"booking {booking.id} is {booking.status}, not booked; "
                           "make a new booking")
        reasons: list[str] = []
        devices: rules.Booked = {}
        for role, name in booking.devices.items():
            got = rules.device_and_profile(store, name)
            if isinstance(got, str):
                reasons.append(got.removeprefix("--device: "))
            else:
                devices[role] = got
        if reasons:
            return _refuse_all(reasons)
        reasons = rules.check_start(store, booking.starts_at, devices, booking.patient,
                                    booking.duration_s, clinic_time.now(),
                                    config.clinic.min_interval_hours * 3600)
        rx = None
        if booking.plan is None:
            checked = rules.prescription_or_reasons(devices[rules.PROFILE_ROLE][1],
                                                    booking.settings, booking.duration_s)
            if isinstance(checked, list):
                reasons += [f"prescription: {m}" for m in checked]
            else:
                rx = checked
        if reasons:
            return _refuse_all(reasons)
        starter = SessionStarter(store, clinic_rules(config))
        note_interrupted(starter)
        live = sys.stdout.isatty() and not args.json
        if booking.plan is not None:
            return _start_plan(starter, booking, devices, operator, args.json, live)
        device, profile = devices[rules.PROFILE_ROLE]
        assert rx is not None
        store.mark_booking(booking.id, "started", operator)
        try:
            report = run_session(starter, profile, rx, device.port, operator, booking.patient,
                                 live=live)
        except BaseException:
            store.mark_booking(booking.id, "done", operator,
                               note="the session ended with an error; see the session records")
            raise
        if not report.output_started:  # nothing delivered: it may be started again
            store.mark_booking(booking.id, "booked", operator,
                               [report.session_id] if report.session_id else [],
                               note=f"{report.outcome} before any output: {report.reason}")
        else:
            store.mark_booking(booking.id, "done", operator,
                               [report.session_id] if report.session_id else [],
                               note=report.outcome)
    print_report(report, args.json)
    return report.exit_status


def _start_plan(starter: SessionStarter, booking: BookingRow, devices: rules.Booked,
                operator: str, as_json: bool, live: bool) -> int:
    from controller.cli.session_cmd import terminal_runner
    from controller.plans.runner import run_plan_booking
    store = starter.store
    assert store is not None and booking.plan is not None
    store.mark_booking(booking.id, "started", operator)
    rows = [dev for dev, _ in devices.values()]
    status: int = EXIT_INTERNAL
    session_ids: list[str] = []
    try:
        status, session_ids = run_plan_booking(
            store=store, booking=booking, device=rows[0], devices=rows[1:], operator=operator,
            run_step=terminal_runner(starter, live), as_json=as_json)
    finally:
        # Nothing delivered by any step: the booking may be started again once fixed.
        again = not any((s := store.get_session(sid)) is not None and (s.delivered_s or 0) > 0
                        for sid in session_ids)
        store.mark_booking(booking.id, "booked" if again else "done", operator,
                           list(session_ids), note=f"plan run exit status {status}")
    return int(status)


def _profile_files(found: rules.Booked) -> dict[str, dict[str, str]]:
    """By role, the profile file each booked device will run on: id, path and SHA-256."""
    from controller.profiles.loader import profile_file
    out: dict[str, dict[str, str]] = {}
    for role, (_device, profile) in found.items():
        path, sha256 = profile_file(profile)
        out[role] = {"id": profile.id, "path": path, "sha256": sha256}
    return out


def _what(b: BookingRow) -> str:
    if b.plan is not None:
        return f"plan {b.plan}"
    settings = " ".join(f"{k}={v}" for k, v in b.settings.items())
    return f"{b.profile} {settings}".strip()


def _devices(b: BookingRow) -> str:
    return ",".join(b.devices.values())


def _line(b: BookingRow) -> str:
    end = b.starts_at + timedelta(seconds=b.duration_s)
    return (f"{_devices(b)} {clinic_time.show(b.starts_at)}-{clinic_time.show(end, False)}, "
            f"patient {b.patient}, {_what(b)} ({clinic_time.show_duration(b.duration_s)})")
