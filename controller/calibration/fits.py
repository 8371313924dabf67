"""The arithmetic of calibration: fits and the corrections they give. Pure code, no device.

Two directions of correction, because devices calibrate two kinds of things:

- a **sensor** (a pad's temperature): the device reports `raw × gain + offset`. Fitting the
  reference against what the device reports (`reference = a × reported + b`) and composing it
  with the gain and offset already applied gives the new pair: `gain' = a × gain`,
  `offset' = a × offset + b`. The raw reading never needs to be known.
- an **output** (a TENS amplitude): the device delivers `set × gain + offset` and the load sees
  some function of that. Fitting what the reference meter measures against the set level
  (`measured = a × set + b`) and asking for `measured = set` gives `gain' = gain / a`,
  `offset' = offset − b × gain / a`.

Ultrasound has a gain only (power = intensity × ERA × duty × gain): a fit through the origin
(`reference = k × nominal`) gives `gain' = gain / k`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Two levels closer than this (relative to the larger) cannot fix a slope: the fit would
# amplify the reading resolution into a large gain error.
MIN_RELATIVE_SPREAD = 1e-3


class FitError(ValueError):
    """The points cannot give a correction; the message says why in the technician's terms."""


@dataclass(frozen=True)
class Line:
    slope: float
    intercept: float

    def at(self, x: float) -> float:
        return self.slope * x + self.intercept


@dataclass(frozen=True)
class GainOffset:
    gain: float
    offset: float


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> Line:
    """Least-squares line through (x, y); at least two distinct x values."""
    _check_pairs(xs, ys, 2)
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    spread = max(abs(x) for x in xs) or 1.0
    if sxx <= (MIN_RELATIVE_SPREAD * spread) ** 2:
        raise FitError("the points are all at the same level: at least two different "
                       "levels are needed to find a gain")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return Line(slope, my - slope * mx)


def fit_through_origin(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares k for y = k × x (minimises Σ (y − k x)²)."""
    _check_pairs(xs, ys, 1)
    sxx = sum(x * x for x in xs)
    if sxx <= 0:
        raise FitError("every nominal level is zero: nothing to scale")
    return sum(x * y for x, y in zip(xs, ys, strict=True)) / sxx


def sensor_correction(current: GainOffset, reported: Sequence[float],
                      reference: Sequence[float]) -> GainOffset:
    """New gain/offset so that the device reports the reference (see the module docstring)."""
    line = linear_fit(reported, reference)
    _positive(line.slope, "the device's readings fall as the reference rises")
    return GainOffset(line.slope * current.gain, line.slope * current.offset + line.intercept)


def output_correction(current: GainOffset, levels: Sequence[float],
                      measured: Sequence[float]) -> GainOffset:
    """New gain/offset so that the measured output equals the set level."""
    line = linear_fit(levels, measured)
    _positive(line.slope, "the measured output falls as the set level rises")
    gain = current.gain / line.slope
    return GainOffset(gain, current.offset - line.intercept * current.gain / line.slope)


def gain_correction(current_gain: float, nominal: Sequence[float],
                    reference: Sequence[float]) -> float:
    """New gain so that the reference equals the nominal (a proportional output)."""
    k = fit_through_origin(nominal, reference)
    _positive(k, "the measured output is zero or negative")
    return current_gain / k


def relative_error(measured: float, expected: float) -> float:
    """(measured − expected) / expected; expected must be positive."""
    if expected <= 0:
        raise FitError(f"expected value {expected:g} must be positive")
    return (measured - expected) / expected


def quantize(value: float, step: float | None) -> float:
    """The nearest multiple of `step` (the device field's resolution); `value` when None."""
    if step is None or step <= 0:
        return value
    # round(…, 12) drops binary noise (0.9615000000000001) so codecs see a clean grid value.
    return round(round(value / step) * step, 12)


def _check_pairs(xs: Sequence[float], ys: Sequence[float], least: int) -> None:
    if len(xs) != len(ys):
        raise FitError(f"{len(xs)} levels but {len(ys)} readings")
    if len(xs) < least:
        raise FitError(f"at least {least} point{'s' if least > 1 else ''} needed, got {len(xs)}")
    if not all(math.isfinite(v) for v in (*xs, *ys)):
        raise FitError("a reading is not a finite number")


def _positive(slope: float, why: str) -> None:
    if not slope > 0:
        raise FitError(f"no correction possible: {why} (slope {slope:.4g}); check the "
                       "connections and the reference instrument")
