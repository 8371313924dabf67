"""A prescription's values against every limit: the parameter's own set and step, the
effective bound (absolute, clinical, regime, ceiling: tightest wins), and the derived
quantities and modality rules.

Each check returns the Problems it finds, with a message naming the parameter, the
value and the limit (and the looser tiers it also met); nothing is rounded or clipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from controller.modality.ceilings import CEILING, ceilings_for, limit_ceilings
from controller.modality.limits import EffectiveBound, Side, effective_bound
from controller.modality.prescription_record import (
    DERIVED_SLACK,
    AppliedLimit,
    Prescription,
    Problem,
)
from controller.modality.rules import Derived, Value, modality_for
from controller.profiles.model import DURATION, Profile
from controller.profiles.sections import Bound, Parameter
from controller.profiles.values import on_step

DURATION_UNIT = "s"
DERIVED_SOURCE = "derived"
# Tolerance for matching a number against a parameter's allowed set.
ALLOWED_REL_TOL = 1e-9


@dataclass(frozen=True)
class Active:
    """The regimes that hold for a request: the profile's and the ceiling table's."""

    profile: tuple[str, ...]
    code: tuple[str, ...]


def with_facts(profile: Profile, draft: Prescription, valid: Mapping[str, Value],
                facts: dict[str, float]) -> tuple[Prescription, list[Problem]]:
    """Derived quantities and modality rules for the valid values, with these facts."""
    rules = modality_for(profile)
    problems: list[Problem] = []
    derived: dict[str, float] = {}
    derived_limits: dict[str, AppliedLimit] = {}
    for d in rules.derived(valid, draft.duration_s, facts):
        derived[d.name] = d.value
        applied = _derived_limit(profile, d.name)
        if applied is not None:
            derived_limits[d.name] = applied
            problems += _check_derived(d, applied, profile.modality)
    problems += [Problem(name, _fmt(valid.get(name, "")), message)
                 for name, message in rules.rule_problems(valid, facts)]
    checked = replace(draft, derived=derived, derived_limits=derived_limits,
                      session_values=rules.session_values(valid, facts), facts=dict(facts),
                      pending=tuple(rules.pending(facts)))
    return checked, problems


def check_value(profile: Profile, name: str, param: Parameter, value: Value, shown: str,
                 regimes: Active) -> list[Problem]:
    if isinstance(value, str):
        return []
    out: list[Problem] = []
    unit = param.unit
    if param.allowed is not None and not any(
            math.isclose(value, a, rel_tol=ALLOWED_REL_TOL) for a in param.allowed):
        listed = ", ".join(f"{a:g}" for a in param.allowed)
        out.append(Problem(name, shown, f"{name}={shown} is not one of the allowed values "
                           f"{listed}{_unit(unit)}"))
    for _, ceiling in limit_ceilings(profile.modality, name, regimes.code):
        if out:
            break   # already off the parameter's own allowed set: said once is enough
        if ceiling.allowed is not None and not any(
                math.isclose(value, a, rel_tol=ALLOWED_REL_TOL) for a in ceiling.allowed):
            out.append(Problem(name, shown, f"{name}={shown} is not one of the values the "
                               f"clinical ceiling for {profile.modality} allows: "
                               f"{ceiling.text()}"))
    if param.step is not None:
        base = profile.limits.absolute.get(name)
        origin = base.min if base is not None and base.min is not None else 0.0
        if not on_step(value, origin, param.step):
            out.append(Problem(name, shown, f"{name}={shown} is not on the {param.step:g}"
                               f"{_unit(unit)} step from {origin:g} (values are never "
                               "rounded)"))
    out += _check_bound(profile, name, value, shown, unit, regimes)
    return out


def check_duration(profile: Profile, duration_s: float, regimes: Active) -> list[Problem]:
    shown = _fmt(duration_s)
    if not math.isfinite(duration_s) or duration_s <= 0:
        return [Problem(DURATION, shown, f"{DURATION}={shown} must be a positive duration")]
    return _check_bound(profile, DURATION, duration_s, shown, DURATION_UNIT, regimes)


def _check_bound(profile: Profile, name: str, value: float, shown: str, unit: str,
                 regimes: Active) -> list[Problem]:
    bound = effective_bound(profile, name, regimes.profile, regimes.code)
    if bound is None or bound.admits(value):
        return []
    if bound.high is not None and value > bound.high.value:
        side, word = bound.high, "above"
    else:
        assert bound.low is not None
        side, word = bound.low, "below"
    looser = [f"{src} {v:g}" for src, v in reversed(_tiers(profile, name, regimes, word))
              if src != side.source]
    others = f" ({', '.join(looser)})" if looser else ""
    if side.source.startswith(CEILING):
        regime = side.source.removeprefix(CEILING)
        return [Problem(name, shown, f"{name}={shown}{_unit(unit)} is {word} the clinical "
                        f"ceiling {side.value:g}{_unit(unit)} for {profile.modality}{regime}"
                        f"{others}")]
    return [Problem(name, shown, f"{name}={shown} is {word} the {side.source} limit "
                    f"{side.value:g}{_unit(unit)}{others}")]


def _tiers(profile: Profile, name: str, regimes: Active, word: str) -> list[tuple[str, float]]:
    """Every profile tier's value on one side of `name`'s bound, least specific first.

    Ceilings are left out: a message names a ceiling only when it is what binds.
    """
    lim = profile.limits
    out: list[tuple[str, float]] = []
    tables: list[tuple[str, dict[str, Bound]]] = [("absolute", lim.absolute),
                                                  ("clinical", lim.clinical)]
    tables += [(f"clinical ({r})", lim.regimes[r].clinical) for r in regimes.profile
               if r in lim.regimes]
    for source, table in tables:
        b = table.get(name)
        v = None if b is None else (b.max if word == "above" else b.min)
        if v is not None:
            out.append((source, v))
    return out


def _derived_limit(profile: Profile, name: str) -> AppliedLimit | None:
    """The profile's derived limit with the ceiling's maximum applied (tightest wins).

    A tie names the profile's limit ("derived"); "ceiling" only when strictly tighter
    or when the profile has none.
    """
    bound = profile.limits.derived.get(name)
    ceiling = ceilings_for(profile.modality).derived.get(name)
    low = Side(bound.min, DERIVED_SOURCE) if bound and bound.min is not None else None
    high = Side(bound.max, DERIVED_SOURCE) if bound and bound.max is not None else None
    if ceiling is not None and ceiling.max is not None \
            and (high is None or ceiling.max < high.value):
        high = Side(ceiling.max, CEILING)
    if low is None and high is None:
        return None
    return AppliedLimit(low, high)


def _check_derived(d: Derived, limit: AppliedLimit, modality: str) -> list[Problem]:
    # Six significant digits keep "2.0004 is above 2" legible; big doses in whole units.
    shown = f"{d.value:.6g}" if abs(d.value) < 1e6 else f"{d.value:.0f}"
    if limit.high is not None and d.value > limit.high.value * (1 + DERIVED_SLACK):
        word, side = "above", limit.high
    elif limit.low is not None and d.value < limit.low.value * (1 - DERIVED_SLACK):
        word, side = "below", limit.low
    else:
        return []
    what = f"clinical ceiling {side.value:g}{_unit(d.unit)} for {modality}" \
        if side.source == CEILING else f"derived limit {side.value:g}{_unit(d.unit)}"
    return [Problem(d.name, shown, f"{d.name}={shown} is {word} the {what} "
                    f"(from {d.basis})")]


def applied_limit(profile: Profile, name: str, param: Parameter | None,
             regimes: Active) -> AppliedLimit:
    bound: EffectiveBound | None = effective_bound(profile, name, regimes.profile,
                                                   regimes.code)
    allowed: tuple[float | str, ...] | None = None
    if param is not None and param.allowed is not None:
        allowed = tuple(param.allowed)
    elif param is not None and param.choices is not None:
        allowed = tuple(param.choices)
    return AppliedLimit(bound.low if bound else None, bound.high if bound else None, allowed)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _unit(unit: str) -> str:
    return f" {unit}" if unit else ""
