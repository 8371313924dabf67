"""Running a treatment plan: everything checked before the first step, then one session a step.

The entry points: `run_plan` (a loaded plan on given ports), `run_plan_ref` (a preset
name or path, loaded now) and `run_plan_booking` (`modctl book start` for a plan
booking: the plan loaded again, each role matched to a booked device).

Before anything starts (`precheck.py`): every device role has a port, every step gets
a fresh prescription inside its limits, and every device is reached, identifies itself
as its profile's model, reports no latched fault and supplies the facts the
remaining limits need (the ultrasound ERA). Any problem refuses the whole plan
with every reason listed, and no output is ever commanded.

Then the steps run in order (`run_loop.py`), each a real `Session` through the step
runner the caller gives (the CLI's handles signals and the live display; the default is
the session-start service's plain runner). Before each step an interactive operator may
start it, pause, skip it or stop the plan; `pause_after` is always waited. A
step that does not complete stops the plan: later steps are never started,
finished ones stay recorded. `plan.start` and `plan.end` go to the audit trail.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Protocol, TextIO

from controller.device.link import DeviceLink
from controller.plans.plan import Plan, PlanError, PlanReport, load_plan
from controller.plans.precheck import DeviceCheck, LinkFactory, PlanCheck, match_devices, precheck
from controller.plans.run_loop import Ask, PlanRun, Sleep
from controller.profiles.loader import ProfileError, resolve_profile
from controller.records.store import RecordStore
from controller.session.service import SessionStarter, StepRunner

# The pre-check (precheck.py) and the run loop (run_loop.py) live apart; their names stay
# importable here.
__all__ = [
    "Ask", "BookingLike", "DeviceCheck", "DeviceLike", "LinkFactory", "PlanCheck", "Sleep",
    "match_devices", "precheck", "run_plan", "run_plan_booking", "run_plan_ref",
]


def run_plan(plan: Plan, ports: Mapping[str, str], store: RecordStore | None, operator: str,
             patient: str | None, interactive: bool, *, run_step: StepRunner | None = None,
             ask: Ask = input, out: TextIO | None = None, sleep: Sleep = time.sleep,
             booking_id: str | None = None, device_check: DeviceCheck | None = None,
             link_factory: LinkFactory = DeviceLink.open,
             plan_check: PlanCheck | None = None) -> PlanReport:
    """Run `plan` with each device role on `ports[role]`; never raises for a plan problem.

    `interactive`: ask before each step (with `ask`, `input` by default); otherwise run
    straight through. `run_step` runs each step's session (default: the session-start
    service's plain runner on `store`). Progress
    goes to `out` (stdout by default). `device_check` refuses a device before the plan
    starts (the calibration gate); `plan_check` refuses the plan for the patient (the minimum
    interval, `patient_rules`). Call from the main thread (signal handlers).
    """
    return PlanRun(plan.name, plan.source, plan.example, store, operator, patient,
                   booking_id, out or sys.stdout).run(
        plan, ports, interactive, run_step or SessionStarter(store).run, ask, sleep,
        device_check, link_factory, plan_check)


def run_plan_ref(plan_ref: str, ports: Mapping[str, str], store: RecordStore | None, *,
                 operator: str, patient: str | None, interactive: bool,
                 booking_id: str | None = None, run_step: StepRunner | None = None,
                 ask: Ask = input,
                 out: TextIO | None = None, sleep: Sleep = time.sleep,
                 device_check: DeviceCheck | None = None,
                 plan_check: PlanCheck | None = None) -> PlanReport:
    """Load the plan `plan_ref` (preset name or path) now, and run it.

    A plan that does not load is refused like any other problem: the report says
    `rejected` (exit 3) with every reason, and the audit trail still has the
    `plan.start`/`plan.end` pair.
    """
    stream = out or sys.stdout
    try:
        plan = load_plan(plan_ref)
    except PlanError as exc:
        return PlanRun(plan_ref, exc.path, False, store, operator, patient, booking_id,
                       stream).refuse(exc.problems)
    return run_plan(plan, ports, store, operator, patient, interactive, run_step=run_step,
                    ask=ask,
                    out=stream, sleep=sleep, booking_id=booking_id, device_check=device_check,
                    plan_check=plan_check)


class BookingLike(Protocol):
    """What `run_plan_booking` reads from a booking (clinic_records.BookingRow)."""

    @property
    def id(self) -> int: ...
    @property
    def plan(self) -> str | None: ...
    @property
    def patient(self) -> str: ...


class DeviceLike(Protocol):
    """What `run_plan_booking` reads from a registered device (clinic_records.DeviceRow)."""

    @property
    def name(self) -> str: ...
    @property
    def profile(self) -> str: ...
    @property
    def port(self) -> str: ...


def run_plan_booking(*, store: RecordStore, booking: BookingLike, device: DeviceLike | None,
                     operator: str, run_step: StepRunner | None = None,
                     as_json: bool = False,
                     devices: Sequence[DeviceLike] = (), interactive: bool | None = None,
                     ask: Ask = input, out: TextIO | None = None, sleep: Sleep = time.sleep,
                     device_check: DeviceCheck | None = None) -> tuple[int, list[str]]:
    """`modctl book start ID` for a plan booking; returns (exit status, session ids).

    The plan (`booking.plan`: preset name or path) is loaded and checked again now.
    Each of its device roles runs on a booked device (`device`, plus any `devices`):
    the one `booking.devices` (role -> device name, when the booking has it) names,
    else the one with the role's profile. A role without a fitting device refuses the
    plan. Prompts between steps when `interactive` (default: stdin is a terminal),
    otherwise runs straight through. Progress goes to `out` (stdout, or stderr with
    `as_json`); with `as_json` the plan report is printed as the last line of stdout.
    The booking id is in the report and in both audit entries.
    """
    stream = out or (sys.stderr if as_json else sys.stdout)
    booking_id = str(booking.id)
    ask_each = sys.stdin.isatty() if interactive is None else interactive
    try:
        plan = load_plan(booking.plan or "")
    except PlanError as exc:
        report = PlanRun(booking.plan or "", exc.path, False, store, operator,
                         booking.patient, booking_id, stream).refuse(exc.problems)
    else:
        booked = [d for d in (device, *devices) if d is not None]
        chosen = getattr(booking, "devices", None)    # role -> device name, when it says
        try:
            ports = match_devices(plan, {d.name: (_profile_id(d.profile), d.port)
                                         for d in booked},
                                  chosen if isinstance(chosen, Mapping) else None)
        except PlanError as exc:
            report = PlanRun(plan.name, plan.source, plan.example, store, operator,
                             booking.patient, booking_id, stream).refuse(exc.problems)
        else:
            report = run_plan(plan, ports, store, operator, booking.patient, ask_each,
                              run_step=run_step, ask=ask, out=stream, sleep=sleep,
                              booking_id=booking_id, device_check=device_check)
    if as_json:
        with suppress(BrokenPipeError):
            print(report.to_json(), flush=True)
    return report.exit_status, report.session_ids


def _profile_id(ref: str) -> str:
    """A registered device's profile (an id or a file path) as a profile id."""
    try:
        return resolve_profile(ref).profile.id
    except ProfileError:
        return ref
