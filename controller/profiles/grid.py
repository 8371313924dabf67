"""Proof that every value an operator may prescribe lands on the device's grid.

A parameter with a `step` (or an integer parameter) offers the operator the grid
`min + n x step` up to the absolute maximum. The field it is written into takes raw
values (engineering / scale) on grids of its own: whole numbers for integer wire
types, `decimals` for SCPI floats, a field `step` counted from the field's `min`,
and a discrete set (`allowed` outside the range, or `tokens`). Checking the range's
ends is not enough: a 0.05 step over a 0.1 register puts every other value between
two raw values, and the device refuses it mid-session.

The proof is arithmetic, never an enumeration of the grid: an arithmetic progression
`a + k d` stays on a grid `o + j g` for every k exactly when its first value `a` and
its difference `d` do, so only the first two values are tested; values outside a
range must be listed in `allowed`, and at most `len(allowed) + 1` of them are looked
at before the first one that is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.profiles.sections import Bound, Parameter
from protocols.map_common import ValueSpec

# Wire types that carry whole numbers only (engineering value = raw x scale).
INTEGRAL_TYPES = frozenset({"int16", "uint16", "bits", "u8", "u16", "i16", "u32", "int"})
# Relative slack for "a whole number of grid steps" and "equal to an allowed value".
GRID_SLACK = 1e-6


@dataclass(frozen=True)
class Grid:
    """Raw values origin + j x step, described for a message."""

    origin: float
    step: float
    words: str

    def holds(self, raw: float) -> bool:
        return _whole((raw - self.origin) / self.step)


def device_grids(spec: ValueSpec) -> list[Grid]:
    """The raw grids a field's values must lie on (empty: any value in range)."""
    kind = getattr(spec, "type", None)
    out = []
    if kind in INTEGRAL_TYPES:
        out.append(Grid(0.0, 1.0, "whole raw values"))
    decimals = getattr(spec, "decimals", None)
    if kind == "float" and decimals is not None:
        out.append(Grid(0.0, 10.0 ** -decimals, f"raw values with at most {decimals} decimals"))
    step = getattr(spec, "step", None)
    if step is not None:
        origin = spec.min or 0.0
        out.append(Grid(origin, float(step), f"raw steps of {step:g} from {origin:g}"))
    return out


def first_off_grid(param: Parameter, bound: Bound | None, spec: ValueSpec
                   ) -> tuple[float, str] | None:
    """The first operator value (engineering units) the field cannot carry, and why;
    None when the whole operator grid lands on the device grid (or the parameter has no
    grid to prove: discrete values are checked one by one elsewhere)."""
    if param.allowed is not None or param.choices is not None or bound is None \
            or bound.min is None or bound.max is None:
        return None
    step = param.step if param.step is not None else (1.0 if param.type == "integer" else None)
    grids = device_grids(spec)
    tokens = getattr(spec, "tokens", None)
    if step is None:
        if grids or tokens is not None or spec.allowed is not None:
            return bound.min, ("the parameter has no step, so the operator may ask for any "
                               "value in between; give it a step the field can carry")
        return None
    scale = spec.scale
    a, d = bound.min / scale, step / scale
    last = math.floor((bound.max - bound.min) / step + GRID_SLACK)
    for grid in grids:
        if not grid.holds(a):
            return bound.min, f"it takes {grid.words}"
        if last >= 1 and not _whole(d / grid.step):
            return bound.min + step, f"it takes {grid.words}"
    listed = [float(v) for v in (tokens or {})] if tokens is not None else \
        [float(v) for v in spec.allowed or [] if isinstance(v, (int, float))]
    if tokens is None and spec.allowed is None:
        return None   # a plain range: its ends are checked with the other values
    for k in _outside_range(a, d, last, None if tokens is not None else spec):
        raw = a + k * d
        if not any(math.isclose(raw, v, rel_tol=GRID_SLACK, abs_tol=GRID_SLACK)
                   for v in listed):
            return bound.min + k * step, "it is neither listed nor inside the field's range"
    return None


def _outside_range(a: float, d: float, last: int, spec: ValueSpec | None) -> list[int]:
    """Indices k of grid values a + k d outside the field's min..max (all of them for a
    token field, `spec` None), in order, at most a few more than can be listed."""
    if spec is None:
        return list(range(min(last, 10_000) + 1))
    out: list[int] = []
    if spec.min is not None and a < spec.min:
        below = min(last, math.ceil((spec.min - a) / d - GRID_SLACK) - 1)
        out += range(0, min(below, len(spec.allowed or []) + 1) + 1)
    if spec.max is not None and a + last * d > spec.max:
        first_above = max(0, math.floor((spec.max - a) / d + GRID_SLACK) + 1)
        out += range(first_above, min(last, first_above + len(spec.allowed or [])) + 1)
    return out


def _whole(x: float) -> bool:
    return abs(x - round(x)) <= GRID_SLACK * max(1.0, abs(x))
