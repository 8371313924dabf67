"""`modctl calibrate PROFILE|DEVICE [--port PORT] [--readings FILE] ...` and
`modctl calibrate history DEVICE`.

Exit status: 0 the calibration passed; 1 no such profile (or, for history, device); 2 usage
error; 3 refused before anything changed
(role, readings file, device busy or not the profile's model, records database unusable);
4 abandoned by the technician; 5 the verification failed, or a fault ended the procedure, or
it could not be recorded.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any

from controller.calibration.context import Timing
from controller.calibration.gate import profile_mismatch
from controller.calibration.plan import (
    PHASE_TEXT,
    CalibrationPlan,
    default_plan,
    profile_channels,
)
from controller.calibration.procedure import (
    TOLERANCES,
    CalibrationJob,
    CalibrationOutcome,
    check_plan,
    run_calibration,
)
from controller.calibration.readings import ReadingsError, load_readings
from controller.calibration.technician import (
    CalibrationAborted,
    FileTechnician,
    PromptTechnician,
    Technician,
)
from controller.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_STOPPED,
    NotFound,
    UsageError,
    error,
)
from controller.cli.live_display import WaitLine
from controller.clinic.roles import RoleRefused, RolesError, require
from controller.profiles.loader import ProfileError, resolve_profile
from controller.profiles.model import Profile
from controller.profiles.numbers import NumberError, parse_integer
from controller.records.store import RecordsError, RecordStore, default_db_path

HISTORY = "history"
# The unit of the device's own measurement (`cal_measured`) per modality, for the wait line.
MEASURED_UNIT = {"thermal": "degC", "ultrasound": "W", "tens": "mA"}
# `calibrate history` of a name that is neither a device nor on any calibration: the status
# `records show` gives an id it does not know (docs/design.md §4.3: 1 for what a command
# needed and could not find).
EXIT_NOT_FOUND = EXIT_INVALID
Ask = Callable[[str], str]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "calibrate", help="technician calibration of a device, and its history",
        usage="%(prog)s PROFILE|DEVICE [--port PORT] [--device NAME] [--readings FILE] "
              "[--channel N] [--operator NAME] [--db PATH]\n"
              "       %(prog)s history DEVICE [--db PATH]",
        description="Run the technician calibration procedure of the device's modality (the "
                    "technician role is needed), or show a device's calibration history with "
                    "'modctl calibrate history DEVICE'. Exit status: 0 passed, 1 no such profile "
                    "or device (history), 2 usage error, "
                    "3 refused before anything changed, 4 abandoned by the technician, "
                    "5 verification failed or a fault ended it.",
        epilog="See docs/calibration.md for each modality's procedure and readings files.")
    p.add_argument("target", metavar="PROFILE|DEVICE",
                   help="a registered device name, or a profile id or YAML path (with --port "
                        "and --device); 'history DEVICE' shows the history")
    p.add_argument("history_device", nargs="?", metavar="DEVICE", help=argparse.SUPPRESS)
    p.add_argument("--port", metavar="PORT",
                   help="device path or pyserial URL (default: the registered device's port)")
    p.add_argument("--device", metavar="NAME",
                   help="name to record the calibration under when PROFILE is given "
                        "(default: the device registered on --port)")
    p.add_argument("--readings", metavar="FILE",
                   help="reference readings from a YAML file instead of prompts (unattended)")
    p.add_argument("--channel", type=_channel, metavar="N",
                   help="multi-channel devices: calibrate only channel N (default: all)")
    p.add_argument("--operator", default="", metavar="NAME",
                   help="the technician (default: the readings file's technician, the roles "
                        "file's default_operator, else $USER)")
    p.add_argument("--db", metavar="PATH", help="records database (default: $MODCTL_DB or "
                   "the per-user data directory)")
    p.set_defaults(run=_main)


def _channel(text: str) -> int:
    """A channel number in ASCII digits (int() would also take other scripts' digits)."""
    try:
        return parse_integer(text, "--channel")
    except NumberError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _main(args: argparse.Namespace) -> int:
    if args.target == HISTORY and args.history_device:
        return _history(args)
    if args.target == HISTORY and not args.port:
        raise UsageError("name the device: modctl calibrate history DEVICE")
    if args.history_device:
        raise UsageError(f"unexpected argument '{args.history_device}' (did you mean "
                         f"'modctl calibrate history {args.history_device}'?)")
    return calibrate(args, input)


# -- calibrate ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    profile: Profile
    port: str
    device: str
    note: str = ""


def calibrate(args: argparse.Namespace, ask: Ask, timing: Timing | None = None) -> int:
    """The command body; `ask` is `input`; tests pass their own, and a shorter `timing`."""
    try:
        store = RecordStore(default_db_path(args.db))
    except RecordsError as exc:
        return _refused(f"{exc}; nothing was sent to the device")
    with store:
        try:
            target = _target(store, args)
            channels = _channels(target.profile, args.channel)
            plan = _plan(target.profile, args.readings, channels)
            technician_name = _technician(plan, args.operator)
        except (ReadingsError, RoleRefused, RolesError, RecordsError, _Refusal) as exc:
            return _refused_all(exc)
        if target.note:
            print(f"note: {target.note}")
        for note in plan.notes:
            print(f"note: {note}")
        timing = timing or Timing.for_profile(target.profile)
        # An unattended thermal point waits for the pad to settle, up to arrival_timeout_s.
        limit = timing.arrival_timeout_s if plan.unattended and plan.modality == "thermal" \
            else None
        wait = WaitLine(sys.stdout, MEASURED_UNIT.get(plan.modality, ""), limit)

        def say(text: str) -> None:
            wait.said(text)
            _say(text)

        technician: Technician
        if plan.unattended:
            technician = FileTechnician(plan, say)
        else:
            technician = PromptTechnician(ask, say, device_may_answer=plan.modality == "tens")
        try:
            instrument, instrument_id = _instrument(target.profile, plan, technician)
        except CalibrationAborted as exc:
            error(f"abandoned before anything was sent to the device: {exc}")
            return EXIT_STOPPED
        job = CalibrationJob(target.profile, target.port, target.device, technician_name,
                             instrument, instrument_id, plan)
        print(f"Calibrating {target.device} ({target.profile.id}, {target.profile.model}) on "
              f"{target.port} for {technician_name}; references: {plan.source}.")
        with _sigterm_as_interrupt():
            try:
                outcome = run_calibration(job, technician, store, say=say, timing=timing,
                                          on_wait=wait.waited)
            finally:
                wait.end()
    _summary(job, outcome)
    return outcome.exit_status


class _Refusal(Exception):
    pass


def _refused(message: str) -> int:
    error(f"refused: {message}")
    return EXIT_REJECTED


def _refused_all(exc: Exception) -> int:
    problems = exc.problems if isinstance(exc, ReadingsError) else [str(exc)]
    for problem in problems:
        error(f"refused: {problem}")
    if isinstance(exc, ReadingsError):
        error("the readings file was refused; nothing was sent to the device")
    return EXIT_REJECTED


def _target(store: RecordStore, args: argparse.Namespace) -> Target:
    row = store.device(args.target)
    if row is not None:
        if row.removed:
            raise _Refusal(f"device '{row.name}' was taken out of service on "
                           f"{(row.removed_at or '')[:10]}; it is not calibrated any more")
        if args.device and args.device != row.name:
            raise UsageError(f"--device {args.device} names another device than "
                             f"'{row.name}'; give one of them")
        return Target(_load(row.profile), args.port or row.port, row.name)
    profile = _load(args.target)
    if not args.port:
        raise UsageError(f"'{args.target}' is not a registered device: give --port PORT "
                         "(and --device NAME) to calibrate a device of that profile")
    if args.device:
        return Target(profile, args.port, args.device, _check_named(store, args.device, profile))
    on_port = store.device_on_port(args.port)
    if on_port is None:
        raise UsageError(f"no registered device on {args.port}: give --device NAME, the name "
                         "the calibration is recorded under (register the device with "
                         "'modctl devices add' so sessions check its calibration)")
    _check_profile(on_port.name, on_port.profile, profile)
    return Target(profile, args.port, on_port.name)


def _check_named(store: RecordStore, name: str, profile: Profile) -> str:
    row = store.device(name)
    if row is None:
        return (f"device '{name}' is not registered: the calibration is recorded under that "
                "name, but sessions check registered devices only (modctl devices add)")
    if row.removed:
        raise _Refusal(f"device '{name}' was taken out of service; it is not calibrated any "
                       "more")
    _check_profile(name, row.profile, profile)
    return ""


def _check_profile(name: str, registered: str, profile: Profile) -> None:
    mismatch = profile_mismatch(registered, profile)
    if mismatch:
        raise _Refusal(f"device '{name}' {mismatch}")


def _load(ref: str) -> Profile:
    try:
        return resolve_profile(ref).profile
    except ProfileError as exc:
        # Not found or not a valid profile: status 1, as every command (docs/cli.md).
        raise NotFound(f"profile {ref}: " + "; ".join(exc.problems)) from None


def _channels(profile: Profile, channel: int | None) -> list[int | None]:
    known = profile_channels(profile)
    if channel is None:
        return known
    if known == [None]:
        raise UsageError(f"--channel: {profile.id} has a single output")
    if channel not in known:
        raise UsageError(f"--channel {channel}: {profile.id} has channels "
                         f"{', '.join(str(c) for c in known)}")
    return [channel]


def _plan(profile: Profile, readings: str | None, channels: list[int | None]) -> CalibrationPlan:
    if profile.calibration is None:
        raise _Refusal(f"profile {profile.id} has no calibration section: there is no "
                       "procedure to run")
    plan = load_readings(readings, profile, channels) if readings else \
        default_plan(profile.modality, channels)
    problems = check_plan(profile, plan, Timing.for_profile(profile))
    if problems:
        raise ReadingsError(problems)
    return plan


def _technician(plan: CalibrationPlan, operator: str) -> str:
    named = plan.technician
    if named and operator and named != operator:
        raise _Refusal(f"the readings file is signed by technician '{named}' but the operator "
                       f"is '{operator}': the technician who took the readings runs it")
    return require("technician", operator or named, action="calibrate devices")


def _instrument(profile: Profile, plan: CalibrationPlan,
                technician: Technician) -> tuple[str, str]:
    if plan.instrument and plan.instrument_id:
        return plan.instrument, plan.instrument_id
    assert isinstance(technician, PromptTechnician)
    kind = profile.calibration.reference if profile.calibration else ""
    name = technician.text(f"Reference instrument{f' ({kind})' if kind else ''}, "
                           "make and model: ")
    ident = technician.text("Its serial number or asset id: ")
    return name, ident


def _say(text: str) -> None:
    print(text, flush=True)


class _sigterm_as_interrupt:
    """SIGTERM is handled like Ctrl-C during the procedure, so the output is stopped and
    service mode left before the process ends."""

    def __enter__(self) -> None:
        self.previous = signal.signal(signal.SIGTERM, self._handler)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self.previous)

    @staticmethod
    def _handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt


def _summary(job: CalibrationJob, outcome: CalibrationOutcome) -> None:
    if outcome.verdict == "refused":
        error(f"refused: {outcome.reason}; nothing was changed on the device")
        return
    word = {"passed": "PASSED", "failed": "FAILED", "fault": "FAILED (fault)",
            "aborted": "ABANDONED"}[outcome.verdict]
    out = sys.stdout if outcome.verdict == "passed" else sys.stderr
    print(f"calibration of {job.device_name}: {word}"
          + (f" - {outcome.reason}" if outcome.reason else ""), file=out)
    for r in outcome.results:
        label = "" if r.channel is None else f"channel {r.channel}: "
        if r.written:
            change = ", ".join(f"{k.removeprefix('cal_')} {r.before.get(k.removeprefix('cal_'))}"
                               f" -> {v}" for k, v in r.written.items())
            print(f"  {label}adjusted {change}", file=out)
        for phase, points in (("as_found", r.as_found), ("as_left", r.as_left)):
            bad = sum(1 for p in points if not p.within)
            if points:
                print(f"  {label}{PHASE_TEXT[phase]}: {len(points) - bad} of {len(points)} "
                      f"points within {TOLERANCES[job.profile.modality]}", file=out)
    if outcome.safety is not None:
        s = outcome.safety
        left = {None: "not entered", True: "left", False: "NOT confirmed left"}[s.service_left]
        print(f"  service mode {left}; output "
              f"{'confirmed off' if s.output_off else 'NOT confirmed off'}", file=out)
        for note in s.notes:
            print(f"  {note}", file=out)
    if outcome.record_id is not None:
        print(f"  recorded as calibration {outcome.record_id} by {job.technician} with "
              f"{job.instrument} ({job.instrument_id}); next due {outcome.next_due}", file=out)
    elif outcome.audit_id is not None:
        print(f"  nothing was written to the device; its calibration is unchanged (audit "
              f"entry {outcome.audit_id})", file=out)
    if outcome.record_error is not None:
        error(f"the calibration could not be recorded and does not count: "
              f"{outcome.record_error}")


# -- history --------------------------------------------------------------------------------

def _history(args: argparse.Namespace) -> int:
    name = args.history_device
    try:
        with RecordStore(default_db_path(args.db), create=False) as store:
            rows = store.calibrations(name)
            status = store.calibration_status(name, datetime.now().astimezone()) \
                if rows else None
            known = bool(rows) or store.device(name) is not None
            where = store.path
    except RecordsError as exc:
        error(str(exc))
        return EXIT_INVALID
    if not known:
        error(f"no device '{name}' in {where}, and no calibration recorded under that name "
              "(modctl devices list shows the registered devices)")
        return EXIT_NOT_FOUND
    if not rows:
        print(f"no calibrations recorded for device '{name}'")
        return EXIT_OK
    print(f"{'ID':>4}  {'PERFORMED':16}  {'RESULT':6}  {'TECHNICIAN':12}  {'NEXT DUE':10}  "
          "INSTRUMENT / CHANGE")
    for row in rows:
        when = row.performed_at.astimezone().strftime("%Y-%m-%d %H:%M")
        result = "passed" if row.passed else "FAILED"
        print(f"{row.id:>4}  {when:16}  {result:6}  {row.technician:12.12}  "
              f"{row.next_due.isoformat():10}  {row.instrument} ({row.instrument_id})")
        for line in _changes(row.after):
            print(f"{'':62}{line}")
    if status is not None:
        state = "OVERDUE" if status.overdue else "in calibration"
        print(f"{name}: {state}: {status.reason}")
    return EXIT_OK


def _changes(after: dict[str, Any]) -> list[str]:
    out = []
    for ch in after.get("channels", []):
        written = ch.get("written") or {}
        if not written:
            continue
        label = "" if ch.get("channel") is None else f"ch {ch['channel']}: "
        out.append(label + ", ".join(f"{k.removeprefix('cal_')} {v}" for k, v in written.items()))
    if after.get("reason"):
        out.append(str(after["reason"]))
    return out


__all__ = ["calibrate", "register"]
