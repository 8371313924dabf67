"""Sections of a device profile, each validated on its own.

Cross-section checks (operations against the map, limits against parameters)
live in `controller.profiles.cross_checks` and `controller.profiles.ranges`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from protocols.map_common import FaultClass, Identifier, Scalar, StrictModel
from protocols.transport import SerialSettings

# The device watchdog bounds how long an output can outlive a dead controller.
MAX_WATCHDOG_S = 2.0
# The controller must talk to the device at least this often per watchdog period.
MIN_POLLS_PER_WATCHDOG = 3


class Link(StrictModel):
    """Serial line settings and the per-request reply timeout."""

    baudrate: int = Field(gt=0)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: Literal[1, 2] = 1
    reply_timeout_s: float = Field(gt=0, le=5.0)
    write_timeout_s: float = Field(0.5, gt=0, le=5.0)

    def settings(self) -> SerialSettings:
        return SerialSettings(self.baudrate, self.bytesize, self.parity, self.stopbits,
                              self.write_timeout_s)


class Parameter(StrictModel):
    """One prescription parameter, in the units the operator uses."""

    type: Literal["number", "integer", "choice"]
    unit: str = ""
    description: str = ""
    step: float | None = Field(None, gt=0)
    allowed: list[float] | None = None
    """Numeric values the device accepts (a discrete set)."""
    choices: dict[Identifier, int] | None = None
    """Named choices and the device code each is sent as."""
    default: float | str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Parameter:
        if self.type == "choice":
            if not self.choices:
                raise ValueError("a 'choice' parameter needs 'choices'")
            if self.allowed is not None or self.step is not None:
                raise ValueError("'allowed' and 'step' are for numeric parameters")
            if self.default is not None and self.default not in self.choices:
                raise ValueError(f"default '{self.default}' is not one of the choices "
                                 f"({', '.join(self.choices)})")
        else:
            if self.choices is not None:
                raise ValueError("'choices' is only for 'choice' parameters")
            if self.default is not None and isinstance(self.default, str):
                raise ValueError(f"default of a {self.type} parameter must be a number")
            if self.allowed is not None and not self.allowed:
                raise ValueError("allowed must list at least one value")
            if self.allowed is not None and self.default is not None \
                    and self.default not in self.allowed:
                raise ValueError(f"default {self.default:g} is not in allowed "
                                 f"{', '.join(f'{a:g}' for a in self.allowed)}")
        return self


class Bound(StrictModel):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g})")
        return self

    def inside(self, outer: Bound) -> bool:
        """True when this bound, a one-sided side inheriting `outer`'s, lies inside it."""
        lo_ok = self.min is None or outer.min is None or self.min >= outer.min
        hi_ok = self.max is None or outer.max is None or self.max <= outer.max
        return lo_ok and hi_ok

    def text(self) -> str:
        lo = "" if self.min is None else f"{self.min:g}"
        hi = "" if self.max is None else f"{self.max:g}"
        return f"[{lo}..{hi}]"


class RegimeCondition(StrictModel):
    parameter: Identifier
    below: float | None = None
    at_or_above: float | None = None

    @model_validator(mode="after")
    def _one_test(self) -> RegimeCondition:
        if (self.below is None) == (self.at_or_above is None):
            raise ValueError("give exactly one of 'below' and 'at_or_above'")
        return self

    def holds(self, value: float) -> bool:
        if self.below is not None:
            return value < self.below
        assert self.at_or_above is not None
        return value >= self.at_or_above


class Regime(StrictModel):
    """Extra clinical limits that apply when a parameter is in a range (e.g. cold)."""

    description: str = ""
    when: RegimeCondition
    clinical: dict[Identifier, Bound] = Field(default_factory=dict)
    interlocks: dict[Identifier, float] = Field(default_factory=dict)


class Limits(StrictModel):
    """Two tiers: absolute (the device manual) and clinical (clinic policy, inside)."""

    absolute: dict[Identifier, Bound]
    clinical: dict[Identifier, Bound] = Field(default_factory=dict)
    regimes: dict[Identifier, Regime] = Field(default_factory=dict)
    derived: dict[Identifier, Bound] = Field(default_factory=dict)
    """Limits on quantities the modality computes (dose, current density)."""
    interlocks: dict[Identifier, float] = Field(default_factory=dict)
    """Measured values that end a session as an interlock when passed."""


class Safety(StrictModel):
    watchdog_s: float = Field(gt=0, le=MAX_WATCHDOG_S)
    poll_period_s: float = Field(gt=0)
    retry_budget: int = Field(ge=0, le=10)
    """Retries per exchange; an exchange still failing after them ends the session."""
    timer_margin_s: float = Field(gt=0, le=120)
    """Device session timer = planned duration + this margin."""
    stale_after_s: float = Field(gt=0)
    """Telemetry older than this is a fault."""
    stop_confirm_timeout_s: float = Field(1.0, gt=0, le=10)
    tolerances: dict[Identifier, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _poll_fast_enough(self) -> Safety:
        needed = self.watchdog_s / MIN_POLLS_PER_WATCHDOG
        if self.poll_period_s > needed + 1e-9:
            raise ValueError(
                f"poll_period_s {self.poll_period_s:g} is too long for watchdog_s "
                f"{self.watchdog_s:g}: at most {needed:.3g} s "
                f"({MIN_POLLS_PER_WATCHDOG} exchanges per watchdog period)")
        if self.stale_after_s >= self.watchdog_s:
            raise ValueError(f"stale_after_s {self.stale_after_s:g} must be below "
                             f"watchdog_s {self.watchdog_s:g}")
        return self


class Step(StrictModel):
    """One exchange: write a map entry (with arguments) or read entries.

    An argument value is a literal, or `$name` for a prescription parameter or
    a session variable. `expect` checks read results (identity, confirmation).
    """

    write: Identifier | None = None
    read: list[Identifier] | None = None
    args: dict[Identifier, Scalar] = Field(default_factory=dict)
    expect: dict[str, Scalar] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        if (self.write is None) == (self.read is None):
            raise ValueError("a step is either 'write: ENTRY' or 'read: [ENTRY, ...]'")
        if self.read is not None and not self.read:
            raise ValueError("'read' must name at least one entry")
        return self


Operation = Annotated[list[Step], Field(min_length=1)]

OPERATION_NAMES = (
    "identify", "configure", "arm", "start", "stop", "emergency_stop", "read_telemetry",
    "clear_fault", "adjust", "enter_calibration", "leave_calibration", "read_calibration",
    "write_calibration", "measure_output",
)


class Operations(StrictModel):
    identify: Operation | None = None
    configure: Operation | None = None
    arm: Operation | None = None
    start: Operation | None = None
    stop: Operation | None = None
    """Controlled stop: ramps down where the device supports it."""
    emergency_stop: Operation | None = None
    read_telemetry: Operation | None = None
    clear_fault: Operation | None = None
    adjust: Operation | None = None
    """Change the output level while running (setpoint, intensity, amplitude)."""
    enter_calibration: Operation | None = None
    leave_calibration: Operation | None = None
    read_calibration: Operation | None = None
    write_calibration: Operation | None = None
    measure_output: Operation | None = None

    def defined(self) -> dict[str, list[Step]]:
        return {n: getattr(self, n) for n in OPERATION_NAMES if getattr(self, n) is not None}


class TelemetrySource(StrictModel):
    source: str
    """Read result key, e.g. `status.output_enabled`; `{name}` expands a variable."""
    map: dict[str, Scalar] | None = None
    """Translate raw results (enum names, codes) into the modality's values."""


# A result key of a read: `model`, `idn.serial`, `get_info.fw_major`.
ResultKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$",
                                 max_length=100)]
# A 64-bit serial is the widest any device reports: four 16-bit words.
MAX_SERIAL_WORDS = 4
# major.minor.patch.build at most.
MAX_VERSION_PARTS = 4


class Identity(StrictModel):
    """Which identification results hold the device's model, serial number and firmware.

    Keys are result keys of the `identify` operation. `serial` as a list is unsigned
    16-bit words, most significant first, combined into one number (a Modbus
    serial_hi, serial_lo); `firmware` as a list is version parts joined with dots
    (framed fw_major, fw_minor -> "1.4").
    """

    model: ResultKey
    serial: ResultKey | Annotated[list[ResultKey], Field(min_length=1,
                                                         max_length=MAX_SERIAL_WORDS)]
    firmware: ResultKey | Annotated[list[ResultKey], Field(min_length=1,
                                                           max_length=MAX_VERSION_PARTS)]

    def result_keys(self) -> list[tuple[str, str]]:
        """(field, result key) for every key named."""
        out = [("model", self.model)]
        for name in ("serial", "firmware"):
            value = getattr(self, name)
            out += [(name, k) for k in ([value] if isinstance(value, str) else value)]
        return out


class FaultCode(StrictModel):
    """What one value of a fault-code telemetry means: words for the operator, and the
    class that decides the session's outcome and stop source."""

    # Written `class:` in YAML (a Python keyword) and dumped so, so that a dump reloads.
    model_config = ConfigDict(serialize_by_alias=True)

    label: str = Field(min_length=1)
    """As the manual words it; shown in stop reasons and refusals."""
    class_: FaultClass = Field(alias="class")
    name: Identifier | None = None
    """What the fault is, in the modality's words (`over_temperature`, `watchdog_expired`):
    the simulator reports this code for that fault (docs/simulator.md)."""


# Fault codes of one telemetry value, by code.
FaultTable = Annotated[dict[int, FaultCode], Field(min_length=1)]


CALIBRATION_READINGS = frozenset({"cal_gain", "cal_offset", "cal_date", "cal_measured"})


class Calibration(StrictModel):
    interval_days: int = Field(gt=0, le=3650)
    adjusts: list[Identifier] = Field(min_length=1)
    """Map entries the calibration procedure writes."""
    readings: dict[Identifier, str] = Field(default_factory=dict)
    """Where read_calibration / measure_output results hold the calibration values
    (`cal_gain`, `cal_offset`, `cal_date`) and the device's own measurement
    (`cal_measured`)."""
    reference: str = ""
    """Reference instrument the technician measures with."""
    method: str = ""
