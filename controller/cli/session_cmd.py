"""`modctl session run PROFILE --port PORT --duration DUR --set NAME=VALUE ... [--json]`."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from contextlib import suppress
from types import FrameType

from controller.cli.common import (
    EXIT_REJECTED,
    EXIT_USAGE,
    NotFound,
    UsageError,
    error,
    patient_option,
)
from controller.cli.live_display import LiveDisplay, SessionFacts, summary_lines
from controller.clinic.roles import RoleRefused, RolesConfig, RolesError, load_roles
from controller.modality.prescription import (
    DurationError,
    Prescription,
    PrescriptionRejected,
    SettingsError,
    build_prescription,
    parse_duration,
    parse_settings,
)
from controller.profiles.loader import ProfileError, resolve_profile
from controller.profiles.model import Profile
from controller.records.store import RecordsError, RecordStore, default_db_path
from controller.session.report import SessionReport, Snapshot
from controller.session.service import ClinicRules, SessionStarter, StepRunner

# How often the terminal display refreshes.
DISPLAY_PERIOD_S = 0.25
# Outcomes whose reason is an error, told on stderr.
FAILED_OUTCOMES = ("fault", "rejected")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("session", help="run a timed treatment session",
                       description="Timed treatment sessions on one device.")
    ps = p.add_subparsers(dest="session_cmd", required=True, metavar="COMMAND")
    run = ps.add_parser(
        "run", help="run one timed session (blocks until it ends)",
        description="Run one timed session. Ctrl-C or SIGTERM stops it in a controlled "
                    "way; a second Ctrl-C or Ctrl-\\ is an emergency stop. Exit status: 0 "
                    "completed, 1 no such profile (or not a valid one), 2 usage error (a "
                    "--patient that is not a pseudonymous id included), 3 rejected before "
                    "any output (a limit, the calibration gate, the patient's minimum "
                    "interval), 4 stopped by the operator or the patient, 5 ended by a fault "
                    "or interlock.")
    run.add_argument("profile", metavar="PROFILE", help="shipped profile id or YAML path")
    run.add_argument("--port", required=True, metavar="PORT",
                     help="device path (/dev/ttyUSB0, /dev/pts/5) or pyserial URL")
    run.add_argument("--duration", required=True, metavar="DUR",
                     help="seconds, or 90s, 5m, 1m30s")
    run.add_argument("--set", dest="settings", action="append", default=[],
                     metavar="NAME=VALUE", help="a prescription parameter (repeatable)")
    run.add_argument("--json", action="store_true",
                     help="print the session report as JSON on the last line of stdout")
    run.add_argument("--clear-fault", action="store_true",
                     help="clear a latched device fault or e-stop before starting (after "
                          "checking the patient and the device); recorded")
    add_record_options(run)
    run.set_defaults(run=_run)


def add_record_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="PATH", help="records database (default: $MODCTL_DB or "
                   "the per-user data directory)")
    p.add_argument("--operator", default="", metavar="NAME", help="who runs the session")
    p.add_argument("--patient", default=None, metavar="ID",
                   help="pseudonymous patient id (like P-0042, never a name); with it the "
                        "clinic's minimum interval between two treatments of one modality "
                        "is enforced")


def load_for_session(ref: str) -> Profile:
    try:
        return resolve_profile(ref).profile
    except ProfileError as exc:
        # Not found or not a valid profile: status 1, as every command (docs/cli.md).
        raise NotFound(f"profile {ref}: " + "; ".join(exc.problems)) from None


def _run(args: argparse.Namespace) -> int:
    # The patient id rule first: a usage error, before anything is opened (docs/sessions.md).
    patient = patient_option(args.patient)
    try:  # roles (docs/bookings.md): a session needs the clinician role
        roles = load_roles()
        operator = roles.require("clinician", args.operator, "run a session")
    except (RoleRefused, RolesError) as exc:
        error(f"rejected: {exc}")
        return EXIT_REJECTED
    profile = load_for_session(args.profile)
    try:
        duration = parse_duration(args.duration)
        settings = parse_settings(args.settings)
    except (DurationError, SettingsError) as exc:
        raise UsageError(str(exc)) from None
    try:
        rx = build_prescription(profile, settings, duration)
    except PrescriptionRejected as exc:
        for message in exc.messages():
            error(f"rejected: {message}")
        if args.json:
            print(_rejection_json(profile, settings, duration, exc))
        return EXIT_REJECTED
    try:
        store = RecordStore(default_db_path(args.db))
    except RecordsError as exc:
        error(f"rejected: {exc}; the session does not start")
        if args.json:
            print(_refusal_json(profile, settings, duration, f"records unavailable: {exc}"))
        return EXIT_REJECTED
    starter = SessionStarter(store, clinic_rules(roles))
    with store:
        note_interrupted(starter)
        # Design invariant 1: never an output on a device whose calibration is overdue;
        # the patient's minimum interval, the same rule bookings use (patient_rules).
        refusal = starter.refusal(profile, rx, args.port, patient)
        if refusal is not None:
            error(f"rejected: {refusal}")
            if args.json:
                print(_refusal_json(profile, settings, duration, refusal))
            return EXIT_REJECTED
        report = run_session(starter, profile, rx, args.port, operator, patient,
                             live=sys.stdout.isatty() and not args.json,
                             clear_fault=args.clear_fault)
    print_report(report, args.json)
    return report.exit_status


def clinic_rules(config: RolesConfig) -> ClinicRules:
    return ClinicRules(require_registered=config.clinic.require_registered_devices,
                       min_interval_s=config.clinic.min_interval_hours * 3600)


def note_interrupted(starter: SessionStarter) -> None:
    for row in starter.mark_interrupted():
        error(f"note: session {row.id} was left open by a crash; marked interrupted "
              f"({row.delivered_s or 0:.1f} s delivered); nothing is resumed")


def run_session(starter: SessionStarter, profile: Profile, rx: Prescription, port: str,
                operator: str, patient: str | None, live: bool,
                clear_fault: bool = False) -> SessionReport:
    """Run a session through `starter` on its worker; signals post stop requests to it.

    Nothing on this (main) thread may end the session early or leave it running unattended:
    a display that cannot be written (closed terminal, `| head`) is dropped, and any other
    exception here stops the session as a fault and waits for it before going on (the worker
    is a daemon thread: the process must not exit under it).
    """
    display = LiveDisplay(SessionFacts(profile.model, profile.modality, rx.record(), port),
                          sys.stdout) if live else None
    session = starter.session(profile, rx, port, operator=operator, patient=patient,
                              clear_fault=clear_fault)
    stops = {"count": 0}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stops["count"] += 1
        emergency = signum == signal.SIGQUIT or stops["count"] > 1
        name = signal.Signals(signum).name
        session.request_stop("operator", emergency=emergency,
                             reason=f"operator {'emergency ' if emergency else ''}stop ({name})")

    previous = {s: signal.signal(s, on_signal)
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)}
    try:
        with starter.running(session):
            try:
                while session.wait(DISPLAY_PERIOD_S) is None:
                    if display is not None and not _show(display, session.snapshot()):
                        display = None
            except BaseException as exc:
                session.request_stop("fault", reason=f"modctl failed while the session ran: "
                                     f"{type(exc).__name__}: {exc}")
                session.wait()
                raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if display is not None:
            _close(display, session.report)
    assert session.report is not None
    return session.report


def terminal_runner(starter: SessionStarter, live: bool) -> StepRunner:
    """A plan step's session on the terminal: signals stop it, the live display shows it."""
    def run(profile: Profile, rx: Prescription, port: str, operator: str,
            patient: str | None) -> SessionReport:
        return run_session(starter, profile, rx, port, operator, patient, live)
    return run


def _show(display: LiveDisplay, snapshot: Snapshot) -> bool:
    """False when the display can no longer be written (the session goes on without it)."""
    try:
        display.show(snapshot)
    except (OSError, ValueError):  # EPIPE, EIO of a closed terminal, a closed file
        return False
    return True


def _close(display: LiveDisplay, report: SessionReport | None) -> None:
    """The display's last line states the outcome (or just ends, when there is none)."""
    with suppress(OSError, ValueError):
        if report is not None:
            display.finish(report)
        else:
            display.close()


def print_report(report: SessionReport, as_json: bool) -> None:
    """Print the summary (and JSON); a closed stdout (`| head`) must not change the exit."""
    try:
        _print_report(report, as_json)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _print_report(report: SessionReport, as_json: bool) -> None:
    """The summary on stdout (stderr with --json, whose stdout is the report). What made a
    session fail or refused it is one sentence on stderr, said once: not on stdout too."""
    failed = report.outcome in FAILED_OUTCOMES
    if failed and not as_json:
        error(f"{report.outcome}: {report.reason}")
    out = sys.stdout if not as_json else sys.stderr
    for line in summary_lines(report, with_reason=as_json or not failed):
        print(line, file=out)
    if as_json:
        print(report.to_json(), flush=True)


def _rejection_json(profile: Profile, settings: dict[str, str], duration: float,
                    exc: PrescriptionRejected) -> str:
    return _refusal_json(profile, settings, duration, "; ".join(exc.messages()))


def _refusal_json(profile: Profile, settings: dict[str, str], duration: float,
                  reason: str) -> str:
    report = SessionReport(
        session_id="", outcome="rejected", reason=reason, profile=profile.id,
        device={}, prescription={"requested": settings, "duration_s": duration},
        planned_s=duration, delivered_s=0.0, stop_source="", dose={})
    return report.to_json()


__all__ = ["EXIT_USAGE", "add_record_options", "print_report", "register", "run_session"]
