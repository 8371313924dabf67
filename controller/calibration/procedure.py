"""Technician calibration of one device: run its modality's procedure safely and record it.

The procedure per modality lives in `calibration_thermal`, `calibration_ultrasound` and
`calibration_tens`; they use only the profile's calibration operations and readings
(`calibration_device`). This module owns what every calibration shares:

1. refuse before anything changes: no calibration section, a device that does not identify
   as the profile's model, or one delivering output (somebody's session);
2. run the procedure, and whatever happens (a fault, the technician abandoning, Ctrl-C) stop
   any output it started, confirm it off and leave service mode (`finally`), and say in the
   record what could and could not be confirmed;
3. record it: every calibration that wrote to the device or reached a verdict is kept with
   `add_calibration` (technician, reference instrument and id, before/after values, pass or
   fail, next due date = performed + the profile's interval; a failed one is due at once) —
   the store also puts it on the audit trail. A run abandoned before anything was written
   leaves the device's calibration as it was and gets an audit entry only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal, Protocol

from controller.calibration import tens as calibration_tens
from controller.calibration import thermal as calibration_thermal
from controller.calibration import ultrasound as calibration_ultrasound
from controller.calibration.context import ChannelResult, Context, Timing
from controller.calibration.device import CalibrationDevice, CalibrationFault, SafetyReport
from controller.calibration.plan import CalibrationPlan, profile_channels
from controller.calibration.technician import CalibrationAborted, Technician
from controller.device.link import DeviceLink
from controller.profiles.model import Profile
from controller.session.exit_codes import EXIT_FAULT, EXIT_OK, EXIT_REJECTED, EXIT_STOPPED
from protocols.errors import ProtocolError
from protocols.map_common import Scalar

Verdict = Literal["passed", "failed", "refused", "aborted", "fault"]
Say = Callable[[str], None]
LinkOpener = Callable[[Profile, str], DeviceLink]
OnWait = Callable[[float, "float | None"], None]
"""Told after every pause of the procedure: the seconds paused and the device's latest
measurement (None before the first), so a long wait (a pad settling on its reference
source, up to 15 min) can show its progress."""

PROCEDURES: dict[str, Callable[[Context], None]] = {
    "thermal": calibration_thermal.calibrate,
    "ultrasound": calibration_ultrasound.calibrate,
    "tens": calibration_tens.calibrate,
}
TOLERANCES = {
    "thermal": f"±{calibration_thermal.TOLERANCE_C:g} degC",
    "ultrasound": f"±{calibration_ultrasound.TOLERANCE_REL:.0%} of nominal power",
    "tens": f"±{calibration_tens.TOLERANCE_MA:g} mA or ±{calibration_tens.TOLERANCE_REL:.0%}, "
            "whichever is larger",
}
EXIT_STATUS: dict[Verdict, int] = {
    "passed": EXIT_OK, "failed": EXIT_FAULT, "fault": EXIT_FAULT, "refused": EXIT_REJECTED,
    "aborted": EXIT_STOPPED}


class CalibrationRefused(Exception):
    """Refused before anything was sent that could change the device."""


class CalibrationStore(Protocol):
    """The two record-store methods a calibration needs (`controller.records.store.RecordStore`)."""

    def add_calibration(self, *, device: str, profile: str, technician: str, instrument: str,
                        instrument_id: str, before: Mapping[str, Any],
                        after: Mapping[str, Any], passed: bool, performed_at: datetime,
                        next_due: date) -> int: ...

    def audit(self, actor: str, action: str, subject: str,
              detail: Mapping[str, Any] | None = None) -> int: ...


@dataclass(frozen=True)
class CalibrationJob:
    profile: Profile
    port: str
    device_name: str
    """The name the record is kept under (the registered device's)."""
    technician: str
    instrument: str
    instrument_id: str
    plan: CalibrationPlan


@dataclass
class CalibrationOutcome:
    verdict: Verdict
    reason: str
    performed_at: datetime
    results: list[ChannelResult] = field(default_factory=list)
    safety: SafetyReport | None = None
    identity: dict[str, Scalar] = field(default_factory=dict)
    record_id: int | None = None
    audit_id: int | None = None
    next_due: date | None = None
    record_error: str | None = None
    """The calibration ran but could not be recorded (it then does not count)."""

    @property
    def exit_status(self) -> int:
        if self.record_error is not None and self.verdict == "passed":
            return EXIT_FAULT
        return EXIT_STATUS[self.verdict]


def check_plan(profile: Profile, plan: CalibrationPlan, timing: Timing) -> list[str]:
    """Problems with the plan found without the device (prescription limits of output runs)."""
    if profile.modality == "ultrasound":
        return calibration_ultrasound.check_plan(profile, plan, timing.max_output_s)
    return []


def run_calibration(job: CalibrationJob, technician: Technician, store: CalibrationStore, *,
                    timing: Timing | None = None, open_link: LinkOpener = DeviceLink.open,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep,
                    now: Callable[[], datetime] | None = None,
                    say: Say = print, on_wait: OnWait | None = None) -> CalibrationOutcome:
    """Calibrate the device on `job.port`; the outcome says what happened and was recorded."""
    profile = job.profile
    performed_at = (now or _local_now)()
    outcome = CalibrationOutcome("refused", "", performed_at)
    if profile.calibration is None:
        outcome.reason = f"profile {profile.id} has no calibration section"
        return outcome
    try:
        link = open_link(profile, job.port)
    except (ProtocolError, OSError) as exc:
        text = str(exc)
        outcome.reason = text if text.startswith("cannot open") else \
            f"cannot open {job.port}: {text}"
        return outcome
    device = _WatchedDevice(link, profile, clock=clock, sleep=sleep, on_wait=on_wait)
    ctx = Context(profile, device, technician, job.plan,
                  timing or Timing.for_profile(profile), say, performed_at.date(),
                  outcome.results)
    channel_vars = [ctx.variables(c.channel) for c in job.plan.channels]
    started = False
    try:
        try:
            outcome.identity = _preflight(device, job, channel_vars)
        except CalibrationRefused as exc:
            outcome.reason = str(exc)
            return outcome
        started = True
        outcome.verdict, outcome.reason = _run(ctx)
    finally:
        if started:   # also on a second Ctrl-C or a bug in a procedure
            outcome.safety = device.make_safe(channel_vars)
        link.close()
    _judge(outcome)
    _record(job, store, device, outcome)
    return outcome


class _WatchedDevice(CalibrationDevice):
    """A CalibrationDevice whose pauses are reported (with its latest measurement) to
    `on_wait`."""

    def __init__(self, link: DeviceLink, profile: Profile, *, clock: Callable[[], float],
                 sleep: Callable[[float], None], on_wait: OnWait | None) -> None:
        self.latest: float | None = None

        def pause(seconds: float) -> None:
            sleep(seconds)
            if on_wait is not None:
                on_wait(seconds, self.latest)

        super().__init__(link, profile, clock=clock, sleep=pause)

    def measure(self, variables: Mapping[str, Scalar]) -> float:
        self.latest = super().measure(variables)
        return self.latest


def _preflight(device: CalibrationDevice, job: CalibrationJob,
               channel_vars: list[dict[str, Scalar]]) -> dict[str, Scalar]:
    profile = job.profile
    every_channel = [{"channel": c} if c is not None else {} for c in profile_channels(profile)]
    try:
        identity = device.link.run("identify", channel_vars[0])
        for variables in every_channel:
            if device.read_telemetry(variables).get("output_on"):
                where = f" on channel {variables['channel']}" if "channel" in variables else ""
                raise CalibrationRefused(
                    f"the device is delivering output{where}: calibrate only a device that "
                    "is not in use (end the session first)")
    except ProtocolError as exc:
        raise CalibrationRefused(f"the device on {job.port} did not answer as a "
                                 f"{profile.model}: {exc}") from None
    return identity


def _run(ctx: Context) -> tuple[Verdict, str]:
    try:
        PROCEDURES[ctx.profile.modality](ctx)
    except CalibrationAborted as exc:
        return "aborted", str(exc)
    except KeyboardInterrupt:
        return "aborted", "interrupted by the technician (Ctrl-C)"
    except CalibrationFault as exc:
        return "fault", str(exc)
    except ProtocolError as exc:
        return "fault", f"device link: {exc}"
    except Exception as exc:  # a bug: still made safe and recorded, reported in one line
        return "fault", f"internal error: {type(exc).__name__}: {exc}"
    return "passed", ""   # provisional: _judge looks at the results


def _judge(outcome: CalibrationOutcome) -> None:
    safety = outcome.safety
    if outcome.verdict == "passed":
        failed = [r for r in outcome.results if not r.passed]
        problems = [r.problem for r in failed if r.problem]
        if problems:
            outcome.verdict, outcome.reason = "failed", "; ".join(problems)
        elif failed or not outcome.results:
            out = sum(1 for r in outcome.results for p in r.as_left if not p.within)
            total = sum(len(r.as_left) for r in outcome.results)
            outcome.verdict = "failed"
            outcome.reason = f"verification failed: {out} of {total} points out of tolerance"
    if safety is not None and not safety.safe:
        note = "; ".join(safety.notes) or "the device's state could not be confirmed"
        if outcome.verdict == "passed":
            outcome.verdict = "failed"
        outcome.reason = f"{outcome.reason}; {note}" if outcome.reason else note


def _record(job: CalibrationJob, store: CalibrationStore, device: CalibrationDevice,
            outcome: CalibrationOutcome) -> None:
    if outcome.verdict == "refused":
        return
    profile = job.profile
    assert profile.calibration is not None
    safety = outcome.safety.record() if outcome.safety else {}
    before = {"identity": outcome.identity, "port": job.port,
              "channels": [r.record_before() for r in outcome.results],
              "reference_source": job.plan.source,
              "method": profile.calibration.method,
              "reference_kind": profile.calibration.reference}
    after = {"outcome": outcome.verdict, "reason": outcome.reason,
             "channels": [r.record_after() for r in outcome.results],
             "tolerance": TOLERANCES[profile.modality], "safety": safety}
    passed = outcome.verdict == "passed"
    day = outcome.performed_at.date()
    outcome.next_due = day + timedelta(days=profile.calibration.interval_days) if passed else day
    try:
        if device.wrote or any(r.concluded for r in outcome.results):
            outcome.record_id = store.add_calibration(
                device=job.device_name, profile=profile.id, technician=job.technician,
                instrument=job.instrument, instrument_id=job.instrument_id, before=before,
                after=after, passed=passed, performed_at=outcome.performed_at,
                next_due=outcome.next_due)
        else:
            outcome.next_due = None
            outcome.audit_id = store.audit(
                job.technician, "calibration.abandoned", f"device/{job.device_name}",
                {"profile": profile.id, "verdict": outcome.verdict, "reason": outcome.reason,
                 "calibration_unchanged": True, "before": before, "safety": safety})
    except Exception as exc:  # the records database: said loudly, never a traceback
        outcome.record_error = f"{type(exc).__name__}: {exc}"


def _local_now() -> datetime:
    return datetime.now().astimezone()
