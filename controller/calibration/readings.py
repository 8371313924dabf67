"""Readings files: a technician's reference readings for an unattended calibration run.

YAML, one file per calibration. Common keys: `instrument` and `instrument_id` (the reference
instrument, as it will stand in the record), optional `technician` (must match `--operator`
when both are given) and `profile` (refused when it names another profile). Then, by modality
(the level keys are the profile's parameter names):

- thermal: `points` (as found) and optional `verify` (as left; default: the same
  temperatures), each `{reference_c: T}`; the pad must be at that reference when the procedure
  reaches the point;
- ultrasound: `points` and `verify`, each `{intensity_w_cm2: I, reference_w: P}`;
- TENS: `reference: meter` (default) or `device`; `channels: {N: {points: [...], verify:
  [...]}}`, each point `{amplitude_ma: A, reference_ma: M}` (`reference_ma` only with a meter).
  With `reference: device` the channels and points may be left out (all channels, default
  levels).

Every problem is reported with the file, line and key, before anything is sent to a device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.calibration.plan import (
    MIN_AS_FOUND_POINTS,
    MIN_AS_LEFT_POINTS,
    SHAPES,
    CalibrationPlan,
    ChannelPlan,
    PointSpec,
    profile_channels,
)
from controller.modality.limits import effective_bound
from controller.profiles.model import Profile, on_step
from controller.profiles.yaml_source import (
    SourceError,
    YamlDocument,
    read_yaml_mapping,
    validation_problems,
)


class ReadingsError(Exception):
    """The readings file cannot be used; `problems` lists every reason, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False,
                              str_strip_whitespace=True)


class _Common(_Strict):
    instrument: str = Field(min_length=1, max_length=200)
    instrument_id: str = Field(min_length=1, max_length=100)
    technician: str | None = Field(None, min_length=1, max_length=64)
    profile: str | None = None


class ThermalPoint(_Strict):
    reference_c: float


class ThermalReadings(_Common):
    points: list[ThermalPoint] | None = None
    verify: list[ThermalPoint] | None = None


class UltrasoundPoint(_Strict):
    intensity_w_cm2: float
    reference_w: float


class UltrasoundReadings(_Common):
    points: list[UltrasoundPoint] | None = None
    verify: list[UltrasoundPoint] | None = None


class TensPoint(_Strict):
    amplitude_ma: float
    reference_ma: float | None = None


class TensChannel(_Strict):
    points: list[TensPoint] | None = None
    verify: list[TensPoint] | None = None


class TensReadings(_Common):
    reference: Literal["meter", "device"] = "meter"
    channels: dict[int, TensChannel] | None = None


MODELS: dict[str, type[_Common]] = {
    "thermal": ThermalReadings, "ultrasound": UltrasoundReadings, "tens": TensReadings}


def load_readings(path: str | Path, profile: Profile,
                  channels: Sequence[int | None]) -> CalibrationPlan:
    """The plan a readings file gives for `channels` of this profile; ReadingsError if unusable."""
    try:
        doc = read_yaml_mapping(path, "readings file")
    except SourceError as exc:
        raise ReadingsError(exc.problems) from None
    model = MODELS[profile.modality]
    try:
        parsed = model.model_validate(doc.data)
    except ValidationError as exc:
        raise ReadingsError(validation_problems(doc, exc, model)) from None
    checker = _Checker(doc, profile)
    if parsed.profile is not None and parsed.profile != profile.id:
        checker.problem(("profile",), f"the readings are for profile {parsed.profile}, "
                                      f"not {profile.id}")
    plan_channels, reference_source = checker.channels(parsed, list(channels))
    if checker.problems:
        raise ReadingsError(checker.problems)
    return CalibrationPlan(
        modality=profile.modality, channels=tuple(plan_channels),
        source=f"readings file {doc.path}", unattended=True,
        reference_source=reference_source, instrument=parsed.instrument.strip(),
        instrument_id=parsed.instrument_id.strip(),
        technician=parsed.technician.strip() if parsed.technician else None,
        notes=tuple(checker.notes))


class _Checker:
    """Semantic checks with file:line messages; collects every problem."""

    def __init__(self, doc: YamlDocument, profile: Profile) -> None:
        self.doc = doc
        self.profile = profile
        self.shape = SHAPES[profile.modality]
        self.problems: list[str] = []
        self.notes: list[str] = []

    def problem(self, loc: tuple[str | int, ...], message: str) -> None:
        line = self.doc.line_of(loc)
        where = f"{self.doc.path}:{line}" if line else self.doc.path
        key = "".join(f"[{p}]" if isinstance(p, int) and i else f".{p}" if i else str(p)
                      for i, p in enumerate(loc))
        self.problems.append(f"{where}: {key}: {message}" if key else f"{where}: {message}")

    # -- per modality --------------------------------------------------------------------
    def channels(self, parsed: Any,
                 wanted: list[int | None]) -> tuple[list[ChannelPlan], Literal[
                     "instrument", "device"]]:
        if isinstance(parsed, TensReadings):
            return self._tens(parsed, wanted), (
                "device" if parsed.reference == "device" else "instrument")
        points = self._points(parsed.points, ("points",), required=True)
        if isinstance(parsed, ThermalReadings) and parsed.verify is None:
            verify = points           # a fixed-temperature source: the same references again
        else:
            verify = self._points(parsed.verify, ("verify",), required=True)
        return [ChannelPlan(None, tuple(points), tuple(verify))], "instrument"

    def _tens(self, parsed: TensReadings, wanted: list[int | None]) -> list[ChannelPlan]:
        known = [c for c in profile_channels(self.profile) if c is not None]
        device_ref = parsed.reference == "device"
        given = parsed.channels
        if given is None:
            if not device_ref:
                self.problem(("channels",), "missing: give the meter readings per channel "
                                            "(channels: {0: {points: [...], verify: [...]}}), "
                                            "or 'reference: device' to use the device's own "
                                            "measurement into its test load")
                return []
            return [self._default_channel(c) for c in wanted]
        for ch in given:
            if ch not in known:
                self.problem(("channels", ch), f"{self.profile.id} has no channel {ch} "
                                               f"(channels: {', '.join(map(str, known))})")
        plans = []
        for want in wanted:
            if want is None or want not in given:
                self.problem(("channels",), f"no readings for channel {want}")
                continue
            plans.append(self._tens_channel(want, given[want], device_ref))
        ignored = sorted(c for c in given if c in known and c not in wanted)
        if ignored:
            self.notes.append(f"readings for channel {', '.join(map(str, ignored))} not used "
                              "(--channel)")
        return plans

    def _default_channel(self, channel: int | None) -> ChannelPlan:
        levels = tuple(PointSpec(v) for v in self.shape.default_levels)
        return ChannelPlan(channel, levels, levels)

    def _tens_channel(self, ch: int, given: TensChannel, device_ref: bool) -> ChannelPlan:
        base: tuple[str | int, ...] = ("channels", ch)
        if device_ref and given.points is None:
            found = [PointSpec(v) for v in self.shape.default_levels]
        else:
            found = self._points(given.points, (*base, "points"), required=True,
                                 need_reference=not device_ref)
        if given.verify is None and device_ref:
            left = [PointSpec(p.level, line=p.line) for p in found]
        else:
            left = self._points(given.verify, (*base, "verify"), required=True,
                                need_reference=not device_ref)
        return ChannelPlan(ch, tuple(found), tuple(left))

    # -- points --------------------------------------------------------------------------
    def _points(self, points: Sequence[BaseModel] | None, loc: tuple[str | int, ...], *,
                required: bool, need_reference: bool = True) -> list[PointSpec]:
        phase = "as found" if loc[-1] == "points" else "as left (after adjustment)"
        least = MIN_AS_FOUND_POINTS if loc[-1] == "points" else MIN_AS_LEFT_POINTS
        if points is None:
            if required:
                self.problem(loc, f"missing: the {phase} readings are needed (at least "
                                  f"{least} point{'s' if least > 1 else ''})")
            return []
        if len(points) < least:
            self.problem(loc, f"{len(points)} point{'s' if len(points) != 1 else ''} given; "
                              f"the {phase} readings need at least {least}")
        out = []
        for i, point in enumerate(points):
            spec = self._point(point, (*loc, i), need_reference)
            if spec is not None:
                out.append(spec)
        return out

    def _point(self, point: BaseModel, loc: tuple[str | int, ...],
               need_reference: bool) -> PointSpec | None:
        shape = self.shape
        values = point.model_dump()
        reference = values.get(shape.reference_key)
        level = reference if shape.level_key is None else values.get(shape.level_key)
        ok = True
        if reference is None and need_reference:
            self.problem(loc, f"missing {shape.reference_key}: the {shape.reading} in "
                              f"{shape.unit}")
            ok = False
        if reference is not None and not self._plausible_reference(float(reference)):
            self.problem((*loc, shape.reference_key),
                         f"{reference:g} {shape.unit} is not a plausible reading "
                         "(it must be a positive number)")
            ok = False
        if level is None or not ok or not self._level_ok(float(level), loc):
            return None
        return PointSpec(float(level), None if reference is None else float(reference),
                         self.doc.line_of(loc))

    def _plausible_reference(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        # Power and current are magnitudes; a temperature may be any finite number (its
        # range is checked as the level).
        return self.shape.level_key is None or value >= 0

    def _level_ok(self, level: float, loc: tuple[str | int, ...]) -> bool:
        shape = self.shape
        key = shape.level_key or shape.reference_key
        bound = effective_bound(self.profile, shape.level, [])
        if level <= 0 and shape.level_key is not None:
            self.problem((*loc, key), f"{level:g} {shape.level_unit}: a level must be above 0")
            return False
        if bound is not None and not bound.admits(level):
            self.problem((*loc, key),
                         f"{level:g} {shape.level_unit} is outside what {self.profile.id} "
                         f"allows for {shape.level} ({bound.text()} {shape.level_unit})")
            return False
        param = self.profile.parameters.get(shape.level)
        if shape.level_key is not None and param is not None and param.step:
            origin = bound.low.value if bound is not None and bound.low is not None else 0.0
            if not on_step(level, origin, param.step):
                self.problem((*loc, key), f"{level:g} {shape.level_unit} is not on the device's "
                                          f"{param.step:g} {shape.level_unit} step")
                return False
        return True


__all__ = ["ReadingsError", "load_readings", "profile_channels"]
