"""Running a treatment plan: everything checked before the first step, then one session a step.

Before anything starts: every device role has a port, every step gets a fresh
prescription inside its limits, and every device is reached, identifies itself
as its profile's model, reports no latched fault and supplies the facts the
remaining limits need (the ultrasound ERA). Any problem refuses the whole plan
with every reason listed, and no output is ever commanded.

Then the steps run in order, each a real `Session` through the step runner the
caller gives (the CLI's handles signals and the live display; the default is the
session-start service's plain runner). Before each step an interactive operator may
start it, pause, skip it or stop the plan; `pause_after` is always waited. A
step that does not complete stops the plan: later steps are never started,
finished ones stay recorded. `plan.start` and `plan.end` go to the audit trail.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from types import FrameType
from typing import Protocol, TextIO

from controller.device.link import DeviceLink, identify
from controller.modality.dose_budget import budget_problems
from controller.modality.prescription import Prescription, PrescriptionRejected, apply_device_facts
from controller.plans.plan import (
    EXAMPLE_WARNING,
    Plan,
    PlanError,
    PlanReport,
    PlanStep,
    StepResult,
    format_duration,
    load_plan,
)
from controller.profiles.loader import ProfileError, resolve_profile
from controller.profiles.model import IdentityError, Profile
from controller.records.store import RecordsError, RecordStore
from controller.session.service import SessionStarter, StepRunner
from controller.session.worker import Session
from protocols.errors import ProtocolError

Ask = Callable[[str], str]
Sleep = Callable[[float], None]
LinkFactory = Callable[[Profile, str], DeviceLink]
DeviceCheck = Callable[[str, Profile, str], str | None]
"""(role, profile, port) -> a reason the device may not be used (calibration overdue), or None."""
PlanCheck = Callable[[Plan], list[str]]
"""plan -> reasons the plan may not start for this patient (the minimum interval), or []."""

# The pause countdown is refreshed this often (and a stop is noticed this fast).
PAUSE_TICK_S = 1.0
# Answers at the between-steps prompt.
START_ANSWERS = frozenset({"", "c", "continue", "y", "yes", "start"})
PAUSE_ANSWERS = frozenset({"p", "pause"})
SKIP_ANSWERS = frozenset({"s", "skip"})
STOP_ANSWERS = frozenset({"q", "quit", "stop", "x"})
PROMPT = "[Enter] start it, [p] pause, [s] skip this step, [q] stop the plan: "
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stop(Exception):
    """The operator stopped the plan between steps (answer, Ctrl-C, SIGTERM, end of input)."""


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
    return _PlanRun(plan.name, plan.source, plan.example, store, operator, patient,
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
        return _PlanRun(plan_ref, exc.path, False, store, operator, patient, booking_id,
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
        report = _PlanRun(booking.plan or "", exc.path, False, store, operator,
                          booking.patient, booking_id, stream).refuse(exc.problems)
    else:
        booked = [d for d in (device, *devices) if d is not None]
        chosen = getattr(booking, "devices", None)    # role -> device name, when it says
        try:
            ports = match_devices(plan, {d.name: (_profile_id(d.profile), d.port)
                                         for d in booked},
                                  chosen if isinstance(chosen, Mapping) else None)
        except PlanError as exc:
            report = _PlanRun(plan.name, plan.source, plan.example, store, operator,
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


def match_devices(plan: Plan, devices: Mapping[str, tuple[str, str]],
                  by_role: Mapping[str, str] | None = None) -> dict[str, str]:
    """Ports by role from devices given as `NAME -> (profile id, port)`.

    With `by_role` (role -> device name) each role takes the device named for it;
    otherwise the one device with the role's profile. PlanError when a role has no
    device, one of the wrong profile, or more than one to choose from.
    """
    ports: dict[str, str] = {}
    problems: list[str] = []
    have = ", ".join(f"{n} ({p})" for n, (p, _) in sorted(devices.items())) or "none"
    for role, pid in plan.roles().items():
        if by_role:
            name = by_role.get(role)
            if name is not None and name in devices and devices[name][0] == pid:
                fits = [name]
            else:
                what = (f"no device is booked for it (booked: {have})" if name is None else
                        f"the device booked for it, '{name}', is " +
                        (f"a {devices[name][0]}" if name in devices else "not available"))
                problems.append(f"device role '{role}' needs a {pid} device: {what}")
                continue
        else:
            fits = sorted(name for name, (prof, _) in devices.items() if prof == pid)
        if len(fits) == 1:
            ports[role] = devices[fits[0]][1]
        elif not fits:
            problems.append(f"device role '{role}' needs a {pid} device, and none is booked "
                            f"(booked: {have})")
        else:
            problems.append(f"device role '{role}' needs a {pid} device: {', '.join(fits)} "
                            "all are, so which one is ambiguous")
    if problems:
        raise PlanError(plan.source, problems)
    return ports


def precheck(plan: Plan, ports: Mapping[str, str], device_check: DeviceCheck | None = None,
             link_factory: LinkFactory = DeviceLink.open,
             plan_check: PlanCheck | None = None) -> tuple[dict[int, Prescription], list[str]]:
    """Fresh prescriptions by step index, and every reason the plan may not start.

    Devices are only contacted when the ports, the limits, the summed dose of each modality's
    steps (`dose_budget`) and `plan_check` are in order; the doses that need a device fact (the
    ultrasound energy) are summed again once the devices have reported it.
    """
    problems: list[str] = []
    for role, profile in plan.profiles.items():
        if not ports.get(role, "").strip():
            problems.append(f"device role '{role}' ({profile.id}) has no port: give "
                            f"--device {role}=PORT")
    problems += [f"device {role}={port}: the plan has no device role '{role}' (roles: "
                 f"{', '.join(plan.profiles)})" for role, port in ports.items()
                 if role not in plan.profiles]
    rxs: dict[int, Prescription] = {}
    for step in plan.steps:
        try:
            rxs[step.index] = step.prescription()
        except PrescriptionRejected as exc:
            problems += [f"{step.label()}: {m}" for m in exc.messages()]
    problems += budget_problems(_planned(plan, rxs))
    if plan_check is not None:
        problems += plan_check(plan)
    if device_check is not None:
        for role, profile in plan.profiles.items():
            port = ports.get(role, "").strip()
            reason = device_check(role, profile, port) if port else None
            if reason:
                problems.append(f"device role '{role}' ({profile.id}) on {port}: {reason}")
    if problems:
        return rxs, problems
    for role, profile in plan.profiles.items():
        steps = [s for s in plan.steps if s.role == role]
        port = ports[role]
        facts, problem = _probe(profile, rxs[steps[0].index], port, link_factory)
        if problem:
            problems.append(f"device role '{role}' ({profile.id}) on {port}: {problem}")
            continue
        for step in steps:
            try:
                rxs[step.index] = apply_device_facts(profile, rxs[step.index], facts)
            except PrescriptionRejected as exc:
                problems += [f"{step.label()}: {m}" for m in exc.messages()]
    if not problems:  # the first sum found nothing: only doses known from facts are new
        problems += budget_problems(_planned(plan, rxs))
    return rxs, problems


def _planned(plan: Plan, rxs: Mapping[int, Prescription]) -> list[tuple[str, Prescription]]:
    return [(s.label(), rxs[s.index]) for s in plan.steps if s.index in rxs]


def _probe(profile: Profile, rx: Prescription, port: str,
           link_factory: LinkFactory) -> tuple[dict[str, float], str]:
    """Identify the device (read-only) and read its facts; a reason when it cannot be used."""
    variables = Session(profile, rx, port).variables
    try:
        link = link_factory(profile, port)
    except ProtocolError as exc:
        return {}, f"cannot open the port: {exc}"
    try:
        found = identify(link, variables)
    except (ProtocolError, IdentityError) as exc:
        return {}, f"did not identify as a {profile.vendor} {profile.model}: {exc}"
    finally:
        link.close()
    if found.latched_fault:
        return {}, f"not ready: {found.latched_fault}"
    return found.facts, ""


class _PlanRun:
    """One run of one plan: its report, its audit entries and the stop signals."""

    def __init__(self, name: str, source: str, example: bool, store: RecordStore | None,
                 operator: str, patient: str | None, booking_id: str | None,
                 out: TextIO) -> None:
        self.store = store
        self.out = out
        self.report = PlanReport(
            plan_run_id=uuid.uuid4().hex, plan=name, source=source, example=example,
            booking_id=booking_id, operator=operator, patient=patient, outcome="",
            reason="", started_at=_now())
        self._signalled = ""
        self._raise_on_signal = False

    # -- the run --------------------------------------------------------------------------
    def run(self, plan: Plan, ports: Mapping[str, str], interactive: bool,
            run_step: StepRunner,
            ask: Ask, sleep: Sleep, device_check: DeviceCheck | None,
            link_factory: LinkFactory, plan_check: PlanCheck | None = None) -> PlanReport:
        self.report.steps = [StepResult.planned(s, ports.get(s.role, "")) for s in plan.steps]
        self.report.planned_s = plan.treatment_s()
        if plan.example:
            self._say(f"*** {EXAMPLE_WARNING} ***")
        if not self._audit_start(plan, ports):
            return self.report
        with self._stop_signals():
            try:
                self._run(plan, ports, interactive, run_step, ask, sleep, device_check,
                          link_factory, plan_check)
            except _Stop as exc:
                self._end("stopped", f"plan stopped by the operator {exc}")
        return self._finish()

    def _run(self, plan: Plan, ports: Mapping[str, str], interactive: bool,
             run_step: StepRunner,
             ask: Ask, sleep: Sleep, device_check: DeviceCheck | None,
             link_factory: LinkFactory, plan_check: PlanCheck | None) -> None:
        self._say(f"plan '{plan.name}': checking {len(plan.steps)} steps and "
                  f"{len(plan.profiles)} devices before anything starts")
        with self._interruptible():
            rxs, problems = precheck(plan, ports, device_check, link_factory, plan_check)
        self._check_signal()
        if problems:
            self._refused(problems)
            return
        total = len(plan.steps)
        for step in plan.steps:
            result = self.report.steps[step.index - 1]
            self._say(f"next: step {step.index} of {total} '{step.name}' on {step.role} "
                      f"({step.profile.id}, {ports[step.role]}) for "
                      f"{format_duration(step.duration_s)}: {_settings(step)}")
            if step.notes:
                self._say(f"  notes: {step.notes}")
            if interactive and not self._ask_to_start(ask):
                result.outcome, result.reason = "skipped", "skipped by the operator"
                self._say(f"  step {step.index} skipped")
                continue
            self._check_signal()
            session = run_step(step.profile, rxs[step.index], ports[step.role],
                               self.report.operator, self.report.patient)
            result.take(session)
            self._say(f"  step {step.index} {result.outcome}: {result.reason} (delivered "
                      f"{result.delivered_s:.1f} of {result.planned_s:g} s, session "
                      f"{result.session_id or 'not recorded'})")
            if result.outcome != "completed":
                self._step_failed(step, result)
                return
            self._check_signal()
            if step.pause_after_s > 0 and step.index < total:
                self._pause(step.pause_after_s, sleep)
        self._end("completed", _completed_reason(self.report.steps))

    def _step_failed(self, step: PlanStep, result: StepResult) -> None:
        what = f"{step.label()} ended {result.outcome}: {result.reason}"
        if result.outcome == "aborted":
            self._end("stopped", f"{what} (stopped by {result.stop_source or 'the operator'})")
        elif result.outcome == "rejected" and not self.report.any_output():
            self._end("rejected", what)
        else:
            self._end("fault", what)

    def _ask_to_start(self, ask: Ask) -> bool:
        """True to start the step, False to skip it; raises _Stop to stop the plan."""
        while True:
            answer = self._read(ask, PROMPT)
            if answer in START_ANSWERS:
                return True
            if answer in SKIP_ANSWERS:
                return False
            if answer in STOP_ANSWERS:
                raise _Stop("at the prompt")
            if answer in PAUSE_ANSWERS:
                self._read(ask, "paused; press Enter when ready to go on: ")
                continue
            self._say(f"  '{answer}' is not an answer here: c (or Enter), p, s or q")

    def _read(self, ask: Ask, prompt: str) -> str:
        with self._interruptible():
            try:
                return ask(prompt).strip().lower()
            except EOFError:
                raise _Stop("(no answer: end of input)") from None

    def _pause(self, seconds: float, sleep: Sleep) -> None:
        self._say(f"  pause of {format_duration(seconds)} before the next step "
                  "(Ctrl-C stops the plan)")
        end = time.monotonic() + seconds
        with self._interruptible():
            while (left := end - time.monotonic()) > 0:
                sleep(min(PAUSE_TICK_S, left))

    # -- ending ---------------------------------------------------------------------------
    def refuse(self, problems: list[str]) -> PlanReport:
        """Refuse a plan that cannot even be loaded or matched (bookings)."""
        if self._audit_start(None, {}):
            self._refused(problems)
            return self._finish()
        return self.report

    def _refused(self, problems: list[str]) -> None:
        self.report.problems = list(problems)
        for p in problems:
            self._say(f"refused: {p}")
        self._end("rejected", f"refused before anything started: {len(problems)} "
                  f"problem{'s' if len(problems) != 1 else ''}")

    def _end(self, outcome: str, reason: str) -> None:
        self.report.outcome, self.report.reason = outcome, reason

    def _finish(self) -> PlanReport:
        r = self.report
        r.ended_at = _now()
        r.delivered_s = round(sum(s.delivered_s for s in r.steps), 3)
        if self.store is not None:
            detail = {"plan_run_id": r.plan_run_id, "outcome": r.outcome, "reason": r.reason,
                      "booking_id": r.booking_id, "delivered_s": r.delivered_s,
                      "steps": [{"name": s.name, "outcome": s.outcome,
                                 "session_id": s.session_id} for s in r.steps]}
            try:
                entry = self.store.audit(r.operator, "plan.end", r.plan, detail)
                r.audit.append({"id": entry, "action": "plan.end"})
            except RecordsError as exc:
                r.reason += f"; records: {exc}"
        self._say(f"plan '{r.plan}': {r.outcome} - {r.reason}")
        return r

    def _audit_start(self, plan: Plan | None, ports: Mapping[str, str]) -> bool:
        """Write `plan.start`; False (and the run refused) when it cannot be recorded."""
        if self.store is None:
            return True
        r = self.report
        detail = {"plan_run_id": r.plan_run_id, "source": r.source, "example": r.example,
                  "booking_id": r.booking_id, "patient": r.patient, "ports": dict(ports),
                  "steps": [s.name for s in plan.steps] if plan else []}
        try:
            r.audit.append({"id": self.store.audit(r.operator, "plan.start", r.plan, detail),
                            "action": "plan.start"})
        except RecordsError as exc:
            # Nothing may run that cannot be recorded.
            r.problems = [str(exc)]
            self._end("rejected", f"refused before anything started: {exc}")
            r.ended_at = _now()
            self._say(f"refused: {exc}")
            return False
        return True

    # -- signals ----------------------------------------------------------------------------
    @contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """Between steps Ctrl-C and SIGTERM stop the plan (run_session has its own, in-step)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = signal.Signals(signum).name
        if self._raise_on_signal:
            raise _Stop(f"({self._signalled})")

    @contextmanager
    def _interruptible(self) -> Iterator[None]:
        """Inside: a stop signal raises at once (waiting, prompting, probing devices)."""
        self._check_signal()
        self._raise_on_signal = True
        try:
            yield
        except KeyboardInterrupt:
            raise _Stop("(Ctrl-C)") from None
        finally:
            self._raise_on_signal = False

    def _check_signal(self) -> None:
        if self._signalled:
            raise _Stop(f"({self._signalled})")

    def _say(self, text: str) -> None:
        # A closed output must never change how the plan ends.
        with suppress(BrokenPipeError, ValueError):
            print(text, file=self.out, flush=True)


def _settings(step: PlanStep) -> str:
    return " ".join(f"{k}={v}" for k, v in step.settings.items()) or "(profile defaults)"


def _completed_reason(steps: list[StepResult]) -> str:
    done = sum(s.outcome == "completed" for s in steps)
    skipped = sum(s.outcome == "skipped" for s in steps)
    extra = f", {skipped} skipped by the operator" if skipped else ""
    return f"{done} of {len(steps)} steps completed{extra}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
