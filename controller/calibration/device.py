"""The device side of a calibration: the profile's calibration operations, and the safety net.

Everything here goes through the profile: operations `enter_calibration`,
`leave_calibration`, `read_calibration`, `write_calibration`, `measure_output` (and the session
operations to run an output), and `calibration.readings` to find the gain, offset, date and
the device's own measurement in what those operations read. No register or command is named.

Safety bookkeeping: the device remembers whether service mode may be on and whether an output
may be running *before* sending the command that could cause it (a lost reply must not hide
it); `make_safe` then stops any output, confirms it off and leaves service mode, whatever
happened before, and says what it could and could not confirm. Stopping and confirming an
output are the device layer's, shared with the session (controller.device.stopping); this
module keeps the per-channel bookkeeping and service mode around them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from controller.device.link import DeviceLink, expand
from controller.device.stopping import command_stop, confirm_stopped, output_reads_on
from controller.profiles.model import INTEGRAL_TYPES, Profile
from protocols.errors import ProtocolError
from protocols.map_common import Scalar

Clock = Callable[[], float]
Sleep = Callable[[float], None]
T = TypeVar("T")

# Telemetry names profiles use for the device's service/calibration flag, where they map it.
SERVICE_FLAGS = ("calibration_mode", "service_mode")
# Attempts at leaving service mode: one retry covers a reply lost on a noisy line.
LEAVE_ATTEMPTS = 2
# Telemetry reads while waiting for the output to read off after a stop.
STOP_CONFIRM_POLL_S = 0.05


class CalibrationFault(Exception):
    """The device or the link failed during the procedure; the message says where."""


@dataclass(frozen=True)
class FieldRange:
    """What the device field carrying a calibration variable accepts, in engineering units."""

    low: float | None
    high: float | None
    step: float | None

    def admits(self, value: float) -> bool:
        return (self.low is None or value >= self.low - 1e-12) and \
            (self.high is None or value <= self.high + 1e-12)

    def text(self) -> str:
        lo = "" if self.low is None else f"{self.low:g}"
        hi = "" if self.high is None else f"{self.high:g}"
        return f"{lo}..{hi}"


@dataclass
class SafetyReport:
    output_off: bool = True
    """The output was confirmed off at the end (or never started and reads off)."""
    service_left: bool | None = None
    """None: service mode was never entered; else whether leaving it was confirmed."""
    notes: list[str] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        return self.output_off and self.service_left is not False

    def record(self) -> dict[str, object]:
        return {"output_off_confirmed": self.output_off,
                "service_mode_left": self.service_left, "notes": list(self.notes)}


class CalibrationDevice:
    def __init__(self, link: DeviceLink, profile: Profile, *, clock: Clock = time.monotonic,
                 sleep: Sleep = time.sleep) -> None:
        if profile.calibration is None:
            raise ValueError(f"profile {profile.id} has no calibration section")
        self.link = link
        self.profile = profile
        self.readings = profile.calibration.readings
        self.clock = clock
        self.sleep = sleep
        self.service_may_be_on = False
        self.output_may_be_on: dict[int | None, Mapping[str, Scalar]] = {}
        """Channel -> the variables its output was started with (to stop it)."""
        self.wrote = False
        self.entered = False
        """Service mode was entered at some point (leaving it is then reported)."""

    # -- plain operations ----------------------------------------------------------------
    def run(self, op: str, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
        try:
            return self.link.run(op, variables)
        except ProtocolError as exc:
            raise CalibrationFault(f"{op}: {exc}") from exc

    def telemetry(self, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
        try:
            return self.read_telemetry(variables)
        except ProtocolError as exc:
            raise CalibrationFault(f"telemetry: {exc}") from exc

    def read_telemetry(self, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
        """Telemetry by the modality's names (ProtocolError as raised), for the channel in
        `variables`; names the reply lacks are left out."""
        return self.link.telemetry(variables, partial=True)

    def has(self, op: str) -> bool:
        return self.link.has(op)

    def output_on(self, variables: Mapping[str, Scalar]) -> bool:
        return output_reads_on(self.telemetry(variables))

    # -- calibration operations ------------------------------------------------------------
    def enter_service(self, variables: Mapping[str, Scalar]) -> None:
        self.service_may_be_on = self.entered = True
        self.run("enter_calibration", variables)

    def leave_service(self, variables: Mapping[str, Scalar]) -> None:
        self.run("leave_calibration", variables)
        self.service_may_be_on = False

    def read_calibration(self, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
        """The calibration values now in the device: gain, offset, date (those it has)."""
        results = self.run("read_calibration", variables)
        out: dict[str, Scalar] = {}
        for name in ("cal_gain", "cal_offset", "cal_date"):
            value = self._reading(results, name, variables)
            if value is not None:
                out[name.removeprefix("cal_")] = value
        if "gain" not in out:
            raise CalibrationFault(f"profile {self.profile.id}: calibration.readings names no "
                                   "source for cal_gain")
        return out

    def write_calibration(self, variables: Mapping[str, Scalar]) -> None:
        self.wrote = True
        self.run("write_calibration", variables)

    def measure(self, variables: Mapping[str, Scalar]) -> float:
        """The device's own measurement (`cal_measured`): from measure_output when the
        profile has it, else from read_calibration."""
        op = "measure_output" if self.has("measure_output") else "read_calibration"
        value = self._reading(self.run(op, variables), "cal_measured", variables)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise CalibrationFault(f"{op}: the device's measurement (cal_measured) is "
                                   f"{value!r}, not a number")
        return float(value)

    def field_range(self, variable: str) -> FieldRange | None:
        """The accepted range and resolution of the field write_calibration puts `variable` in."""
        pmap = self.profile.protocol
        for step in self.profile.operations.write_calibration or []:
            for arg, ref in step.args.items():
                if ref != f"${variable}" or step.write is None:
                    continue
                spec = pmap.arg_spec(step.write, arg)
                if spec is None:
                    return None
                decimals = getattr(spec, "decimals", None)
                if getattr(spec, "type", None) in INTEGRAL_TYPES:
                    resolution: float | None = spec.scale
                elif decimals is not None:
                    resolution = spec.scale * 10.0 ** -decimals
                else:
                    resolution = None
                return FieldRange(None if spec.min is None else spec.min * spec.scale,
                                  None if spec.max is None else spec.max * spec.scale,
                                  resolution)
        return None

    # -- output runs -----------------------------------------------------------------------
    def start_output(self, channel: int | None, variables: Mapping[str, Scalar]) -> None:
        """Arm the device's backstops (watchdog, timer) and start; configure comes first."""
        self.run("configure", variables)
        self.run("arm", variables)
        self.output_may_be_on[channel] = dict(variables)
        self.run("start", variables)

    def stop_output(self, channel: int | None) -> bool:
        """Stop at once (emergency stop when the stop fails) and confirm the output reads
        off (controller.device.stopping)."""
        variables = self.output_may_be_on.get(channel)
        if variables is None:
            return True
        sent = command_stop(self.link, variables, emergency=False, immediate=True)
        if sent.op is None:
            return False
        if confirm_stopped(self.link, variables,
                           timeout_s=self.profile.safety.stop_confirm_timeout_s,
                           clock=self.clock, pause=self.sleep, poll_s=STOP_CONFIRM_POLL_S,
                           partial=True):
            del self.output_may_be_on[channel]
            return True
        return False

    # -- the safety net ----------------------------------------------------------------------
    def make_safe(self, channel_variables: Sequence[Mapping[str, Scalar]]) -> SafetyReport:
        """Stop every output this procedure may have started, confirm every channel off and
        leave service mode. Never raises: what it cannot confirm, it reports."""
        report = SafetyReport()
        for channel in list(self.output_may_be_on):
            if not self.stop_output(channel):
                report.output_off = False
                report.notes.append("stop not confirmed by device"
                                    + (f" (channel {channel})" if channel is not None else ""))
        entered = self.entered
        if self.service_may_be_on:
            report.service_left = self._leave_with_retry(channel_variables[0], report)
        elif entered:
            report.service_left = True
        for variables in channel_variables:
            try:
                telemetry = self.read_telemetry(variables)
            except ProtocolError as exc:
                report.output_off = False
                report.notes.append(f"output state not confirmed: {exc}")
                continue
            if output_reads_on(telemetry):
                report.output_off = False
                report.notes.append("an output reads on after the procedure")
            if entered and any(telemetry.get(f) for f in SERVICE_FLAGS):
                report.service_left = False
                report.notes.append("the device still reports service mode")
        return report

    def _leave_with_retry(self, variables: Mapping[str, Scalar], report: SafetyReport) -> bool:
        problem = ""
        for _ in range(LEAVE_ATTEMPTS):
            try:
                self.link.run("leave_calibration", variables)
                self.service_may_be_on = False
                return True
            except ProtocolError as exc:
                problem = str(exc)
        report.notes.append(f"leaving service mode not confirmed by device: {problem}")
        return False

    def _reading(self, results: Mapping[str, Scalar], name: str,
                 variables: Mapping[str, Scalar]) -> Scalar | None:
        source = self.readings.get(name)
        return None if source is None else results.get(expand(source, variables))


def while_waiting(work: Callable[[], T], keep_alive: Callable[[], None] | None,
                  period_s: float, limit_s: float, what: str) -> T:
    """Run `work` (a prompt) on a helper thread while this thread keeps the device's watchdog
    fed with `keep_alive` every `period_s`; CalibrationFault after `limit_s` without an answer.

    The device link stays on this thread. Ctrl-C lands here, so the caller's `finally` stops
    the output at once even while the prompt thread is still blocked on input."""
    if keep_alive is None:
        return work()
    done = threading.Event()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:   # handed to the waiting thread, never lost
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="calibration prompt", daemon=True).start()
    deadline = time.monotonic() + limit_s
    while not done.wait(period_s):
        keep_alive()
        if time.monotonic() >= deadline:
            raise CalibrationFault(f"no {what} within {limit_s:g} s; the output was stopped")
    error = box.get("error")
    if isinstance(error, BaseException):
        raise error
    return box["value"]  # type: ignore[return-value]

