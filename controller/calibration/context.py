"""What the modality procedures share: timing, results, and fitting values to the device."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date

from controller.calibration.device import CalibrationDevice
from controller.calibration.fits import quantize
from controller.calibration.plan import (
    CalibrationPlan,
    ChannelPlan,
    Phase,
    PointSpec,
    channel_text,
)
from controller.calibration.technician import PointRequest, Technician
from controller.profiles.model import Profile
from protocols.map_common import Scalar

Say = Callable[[str], None]

# An output run for one reading lasts at most this long: time to read a radiation force
# balance (it settles in 10-30 s) with margin; the device timer is armed to it as well.
MAX_OUTPUT_S = 120.0
# Output on before a reading is taken: the device's power estimate and a balance need a few
# seconds to settle after the start.
OUTPUT_SETTLE_S = 3.0
# Unattended thermal points: the device reading must hold within one display step over this
# many reads, this far apart, before it counts as settled; give up after the timeout.
STABLE_SAMPLES = 4
STABLE_POLL_S = 0.5
ARRIVAL_TIMEOUT_S = 900.0


class NotAdjustable(Exception):
    """The correction the readings call for is outside what the device accepts."""


@dataclass(frozen=True)
class Timing:
    poll_s: float
    """Telemetry period while an output runs: feeds the device watchdog (profile poll period)."""
    settle_s: float = OUTPUT_SETTLE_S
    max_output_s: float = MAX_OUTPUT_S
    stable_samples: int = STABLE_SAMPLES
    stable_poll_s: float = STABLE_POLL_S
    arrival_timeout_s: float = ARRIVAL_TIMEOUT_S

    @classmethod
    def for_profile(cls, profile: Profile) -> Timing:
        return cls(poll_s=profile.safety.poll_period_s)


@dataclass(frozen=True)
class PointResult:
    level: float
    reference: float
    source: str
    """technician, file or device: where the reference came from."""
    device: float | None
    """The device's own reading at this point, for the record."""
    expected: float
    observed: float
    tolerance: float
    relative: bool = False
    """Error and tolerance are fractions of `expected` (ultrasound power)."""

    @property
    def error(self) -> float:
        diff = self.observed - self.expected
        return diff / self.expected if self.relative else diff

    @property
    def within(self) -> bool:
        return abs(self.error) <= self.tolerance + 1e-9

    def record(self) -> dict[str, object]:
        return {"level": self.level, "reference": self.reference, "source": self.source,
                "device": self.device, "expected": round(self.expected, 6),
                "observed": round(self.observed, 6), "error": round(self.error, 6),
                "tolerance": self.tolerance, "relative": self.relative,
                "within": self.within}

    def text(self, unit: str, expected: str = "expected", observed: str = "measured") -> str:
        err = f"{self.error:+.1%}" if self.relative else f"{self.error:+.3f} {unit}"
        tol = f"{self.tolerance:.0%}" if self.relative else f"{self.tolerance:g} {unit}"
        dev = "" if self.device is None or self.device == self.observed else \
            f" (the device's own: {self.device:.4g})"
        mark = "ok" if self.within else "OUT"
        return (f"{expected} {self.expected:.4g}, {observed} {self.observed:.4g}{dev}: "
                f"{err} (tolerance ±{tol}) {mark}")


@dataclass
class ChannelResult:
    channel: int | None
    before: dict[str, Scalar] = field(default_factory=dict)
    as_found: list[PointResult] = field(default_factory=list)
    written: dict[str, Scalar] | None = None
    after: dict[str, Scalar] | None = None
    as_left: list[PointResult] = field(default_factory=list)
    problem: str | None = None
    """Why this channel could not be calibrated (not adjustable, read-back mismatch)."""
    concluded: bool = False
    """The procedure reached a verdict for this channel (verified or not adjustable)."""

    @property
    def as_found_within(self) -> bool:
        return bool(self.as_found) and all(p.within for p in self.as_found)

    @property
    def passed(self) -> bool:
        return self.concluded and self.problem is None and bool(self.as_left) \
            and all(p.within for p in self.as_left)

    def record_before(self) -> dict[str, object]:
        return {"channel": self.channel, "calibration": dict(self.before),
                "as_found": [p.record() for p in self.as_found],
                "as_found_within_tolerance": self.as_found_within}

    def record_after(self) -> dict[str, object]:
        return {"channel": self.channel, "written": self.written,
                "calibration": self.after, "as_left": [p.record() for p in self.as_left],
                "passed": self.passed, "problem": self.problem}


@dataclass
class Context:
    profile: Profile
    device: CalibrationDevice
    technician: Technician
    plan: CalibrationPlan
    timing: Timing
    say: Say
    today: date
    results: list[ChannelResult] = field(default_factory=list)

    def variables(self, channel: int | None) -> dict[str, Scalar]:
        """Session variables for calibration operations on one channel."""
        if channel is None:
            return {}
        return {"channel": channel, "channel_mask": 1 << channel, "ramp_down_s": 0.0}

    def request(self, phase: Phase, plan: ChannelPlan, index: int, instruction: str,
                device_value: float | None = None) -> PointRequest:
        points = plan.points(phase)
        return PointRequest(phase=phase, index=index, count=len(points), channel=plan.channel,
                            spec=points[index], shape=self.plan.shape, instruction=instruction,
                            device_value=device_value)

    def fit_to_device(self, wanted: Mapping[str, float]) -> dict[str, Scalar]:
        """Quantise each value to its device field's resolution; NotAdjustable when outside
        what the field accepts (the device then needs repair, not calibration)."""
        out: dict[str, Scalar] = {}
        for name, value in wanted.items():
            rng = self.device.field_range(name)
            q = quantize(value, None if rng is None else rng.step)
            if rng is not None and not rng.admits(q):
                raise NotAdjustable(
                    f"the readings call for {name.removeprefix('cal_')} {value:.4g}, outside "
                    f"what the device accepts ({rng.text()}): it needs repair, not calibration")
            out[name] = q
        return out

    def check_read_back(self, result: ChannelResult) -> None:
        """The values read back must be those written (within the field's resolution)."""
        assert result.written is not None and result.after is not None
        for name, wrote in result.written.items():
            key = name.removeprefix("cal_")
            got = result.after.get(key)
            if got is None:
                continue
            rng = self.device.field_range(name)
            step = rng.step if rng is not None and rng.step else 1e-9
            same = str(got) == str(wrote) if isinstance(wrote, str) else \
                isinstance(got, (int, float)) and abs(float(got) - float(wrote)) <= step / 2
            if not same:
                result.problem = (f"{channel_text(result.channel)}{key} reads back as {got!r} "
                                  f"after writing {wrote!r}")


def spec_levels(points: tuple[PointSpec, ...]) -> list[float]:
    return [p.level for p in points]
