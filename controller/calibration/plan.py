"""What a calibration measures: the points per channel and phase, and where references come from.

A plan is fixed before anything is sent to the device, from a readings file or from the
defaults below for an interactive run, so a bad file is refused before anything changes.

Phases: `as_found` (the device as it came in, measured before any adjustment) and `as_left`
(after the new calibration is written: the verification that decides pass or fail).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from controller.profiles.model import Profile

Phase = Literal["as_found", "as_left"]
PHASES: tuple[Phase, ...] = ("as_found", "as_left")
PHASE_TEXT = {"as_found": "as found", "as_left": "as left (verification)"}
ReferenceSource = Literal["instrument", "device"]


@dataclass(frozen=True)
class ModalityShape:
    """How one modality's points look: the modality's knowledge, no device's."""

    level: str
    """The prescription parameter a point's level is expressed in."""
    level_key: str | None
    """Key of the level in a readings file; None when the reference is the level (thermal)."""
    reference_key: str
    unit: str
    """Unit of the reference readings."""
    level_unit: str
    default_levels: tuple[float, ...]
    reading: str
    """What the technician reads, for prompts and messages."""


# Fewest as-found points: a gain and an offset need two levels (ultrasound's gain alone could
# do with one, but a second level catches a non-proportional output).
MIN_AS_FOUND_POINTS = 2
MIN_AS_LEFT_POINTS = 1

SHAPES: dict[str, ModalityShape] = {
    # 20 degC (room-temperature water, no heater needed) and 42 degC (near the top of the heat
    # range, under the 45 degC clinical limit): two stable sources spanning most of what the pad
    # is used at, so the fit interpolates rather than extrapolates.
    "thermal": ModalityShape("temperature_c", None, "reference_c", "degC", "degC",
                             (20.0, 42.0), "reference thermometer reading"),
    # Continuous output across the clinical range (at most 2.0 W/cm2): where a balance reads
    # well (a few watts) and where treatments run.
    "ultrasound": ModalityShape("intensity_w_cm2", "intensity_w_cm2", "reference_w", "W",
                                "W/cm2", (0.5, 1.0, 1.5, 2.0),
                                "radiation force balance reading"),
    # Low, middle and high therapeutic amplitudes (clinical limit 80 mA) into the test load.
    "tens": ModalityShape("amplitude_ma", "amplitude_ma", "reference_ma", "mA", "mA",
                          (10.0, 30.0, 60.0), "output meter reading across the test load"),
}


@dataclass(frozen=True)
class PointSpec:
    level: float
    """Thermal: the temperature the source is brought to (the reference when from a file);
    ultrasound: intensity in W/cm2; TENS: amplitude in mA."""
    reference: float | None = None
    """From a readings file; None: the technician is asked (or the device measures)."""
    line: int | None = None
    """Line of the readings file, for messages."""


@dataclass(frozen=True)
class ChannelPlan:
    channel: int | None
    as_found: tuple[PointSpec, ...]
    as_left: tuple[PointSpec, ...]

    def points(self, phase: Phase) -> tuple[PointSpec, ...]:
        return self.as_found if phase == "as_found" else self.as_left


@dataclass(frozen=True)
class CalibrationPlan:
    modality: str
    channels: tuple[ChannelPlan, ...]
    source: str
    """Where the references come from, for the record: 'technician at the prompts' or
    'readings file PATH'."""
    unattended: bool
    """References from a file: nobody to ask, nobody to wait for."""
    reference_source: ReferenceSource = "instrument"
    """TENS may use the device's own measurement into its test load as the reference."""
    instrument: str | None = None
    instrument_id: str | None = None
    technician: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def shape(self) -> ModalityShape:
        return SHAPES[self.modality]


def default_plan(modality: str, channels: list[int | None],
                 reference_source: ReferenceSource = "instrument") -> CalibrationPlan:
    """The interactive plan: the modality's default levels, the same before and after."""
    levels = tuple(PointSpec(v) for v in SHAPES[modality].default_levels)
    return CalibrationPlan(
        modality=modality, channels=tuple(ChannelPlan(c, levels, levels) for c in channels),
        source="technician at the prompts", unattended=False,
        reference_source=reference_source)


def profile_channels(profile: Profile) -> list[int | None]:
    """The device's output channels: the `channel` parameter's values, else one (None)."""
    param = profile.parameters.get("channel")
    if param is None or not param.allowed:
        return [None]
    return [int(c) for c in param.allowed]


def channel_text(channel: int | None) -> str:
    return "" if channel is None else f"channel {channel}: "
