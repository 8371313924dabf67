"""Every value the controller may write for a `$variable` must fit the device field it goes to.

The extremes come from the profile (absolute limits, allowed values, choices, the
timer margin, the watchdog); each is checked against the field's raw range, its
integral steps and (controller.profiles.grid) the operator's whole step grid.
"""

from __future__ import annotations

import math

from controller.profiles.grid import INTEGRAL_TYPES, first_off_grid
from controller.profiles.values import DURATION
from controller.profiles.view import ProfileView
from protocols.map_common import ValueSpec

# How close a scaled value must be to a whole number to count as one (float noise only).
WHOLE_SLACK = 1e-6


def check_ranges(profile: ProfileView) -> list[str]:
    """Every value the controller may write for a `$variable` fits the device field."""
    out: list[str] = []
    for op, steps in profile.operations.defined().items():
        for i, step in enumerate(steps):
            if step.write is None:
                continue
            for arg, ref in step.args.items():
                if not (isinstance(ref, str) and ref.startswith("$")):
                    continue
                spec = profile.protocol.arg_spec(step.write, arg)
                if spec is None:
                    continue
                integral = _integral(spec)
                param = profile.parameters.get(ref[1:])
                before = len(out)
                if integral and param is not None and param.step is not None \
                        and not _whole(param.step / spec.scale):
                    out.append(
                        f"parameters.{ref[1:]}.step: {param.step:g} is finer than "
                        f"{step.write}.{arg} can carry (steps of {spec.scale:g})")
                for value, why in _possible_values(profile, ref[1:]):
                    raw = value / spec.scale
                    if _whole(raw):
                        raw = round(raw)
                    elif integral:
                        out.append(
                            f"operations.{op}[{i}].args.{arg}: {ref} may be {value:g} "
                            f"({why}), which {step.write}.{arg} cannot carry: it takes "
                            f"whole steps of {spec.scale:g}")
                        continue
                    if not spec.raw_in_range(raw):
                        out.append(
                            f"operations.{op}[{i}].args.{arg}: {ref} may be {value:g} "
                            f"({why}), but {step.write}.{arg} accepts "
                            f"{_engineering_range(spec)}")
                if param is None or len(out) > before:
                    continue
                off = first_off_grid(param, profile.limits.absolute.get(ref[1:]), spec)
                if off is not None:
                    out.append(
                        f"operations.{op}[{i}].args.{arg}: {ref} may be {off[0]:g} "
                        f"(on the operator's grid of {ref[1:]}), which "
                        f"{step.write}.{arg} cannot carry: {off[1]} "
                        f"({_engineering_range(spec)})")
    return out


def _possible_values(profile: ProfileView, var: str) -> list[tuple[float, str]]:
    """The extreme values the controller may send for a variable, and why."""
    lim, p = profile.limits, profile.parameters.get(var)
    if p is not None:
        if p.choices:
            return [(float(c), f"choice {n}") for n, c in p.choices.items()]
        if p.allowed:
            return [(float(a), "an allowed value") for a in p.allowed]
        bound = lim.absolute.get(var)
        return [] if bound is None else [
            (float(b), f"the absolute {side} of {var}")
            for b, side in ((bound.min, "min"), (bound.max, "max")) if b is not None]
    if var == "timer_s":
        dur, margin = lim.absolute.get(DURATION), profile.safety.timer_margin_s
        return [] if dur is None else [
            (float(math.ceil(b + margin)), f"{DURATION} {side} {b:g} + margin {margin:g}")
            for b, side in ((dur.min, "min"), (dur.max, "max")) if b is not None]
    if var == "watchdog_s":
        return [(profile.safety.watchdog_s, "safety.watchdog_s")]
    if var == "channel_mask" and "channel" in profile.parameters:
        chan = profile.parameters["channel"]
        return [(float(1 << int(c)), "a channel") for c in chan.allowed or []]
    if var == "ramp_up_s" and "max_ramp_s" in profile.rules:
        return [(0.0, "no ramp"), (profile.rules["max_ramp_s"], "rules.max_ramp_s")]
    return []


def _integral(spec: ValueSpec) -> bool:
    return getattr(spec, "type", None) in INTEGRAL_TYPES


def _whole(x: float) -> bool:
    return abs(x - round(x)) < WHOLE_SLACK


def _engineering_range(spec: ValueSpec) -> str:
    if spec.scale == 1:
        return spec.describe_range()
    parts = []
    if spec.allowed is not None:
        parts.append("one of " + ", ".join(
            f"{float(a) * spec.scale:g}" for a in spec.allowed if isinstance(a, (int, float))))
    if spec.min is not None or spec.max is not None:
        lo = "" if spec.min is None else f"{spec.min * spec.scale:g}"
        hi = "" if spec.max is None else f"{spec.max * spec.scale:g}"
        parts.append(f"{lo}..{hi}")
    step = getattr(spec, "step", None)
    every = "" if step is None else f" in steps of {step * spec.scale:g}"
    return " or ".join(parts) + every + f" {spec.unit}".rstrip() + \
        f" (raw {spec.describe_range()})"
