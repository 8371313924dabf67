"""The operator's request as a validated prescription, before anything reaches a device.

Values are checked, never rounded or clipped (docs/design.md §2.6): a value off the step
grid, outside the effective limit or outside the allowed set is refused with a
message naming the parameter, the value and the limit. Every problem is
collected before `PrescriptionRejected` is raised. The prescription records the
effective limit each value met and which tier set it, and the derived
quantities (dose, current density) the modality computes from it.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from controller.modality.ceilings import CEILING, ceilings_for, limit_ceilings
from controller.modality.limits import (
    EffectiveBound,
    Side,
    active_ceiling_regimes,
    active_regimes,
    effective_bound,
)
from controller.modality.rules import Derived, Value, modality_for
from controller.profiles.model import DURATION, Profile, on_step
from controller.profiles.numbers import (
    MAX_NUMBER_TEXT,
    NOT_A_NUMBER,
    NOT_WHOLE,
    NumberError,
    is_decimal,
    parse_decimal,
    parse_integer,
)
from controller.profiles.sections import Bound, Parameter

DURATION_UNIT = "s"
DERIVED_SOURCE = "derived"
# Relative float-noise allowance on computed (derived) quantities only; operator
# values are compared exactly.
DERIVED_SLACK = 1e-9
# Tolerance for matching a number against a parameter's allowed set.
ALLOWED_REL_TOL = 1e-9
# ASCII digits only (re.ASCII): Python's \d and float() also take "٤٠" and "４０".
_UNIT_DURATION = re.compile(
    r"(?:(?P<h>[0-9]+(?:\.[0-9]+)?)h)?(?:(?P<m>[0-9]+(?:\.[0-9]+)?)m)?"
    r"(?:(?P<s>[0-9]+(?:\.[0-9]+)?)s)?", re.ASCII)
_SECONDS_PER = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_FORMS = "seconds (90, 2.5) or 90s, 5m, 1m30s, 1h"


class DurationError(ValueError):
    """A DUR text that is not a positive duration (a usage error)."""


class SettingsError(ValueError):
    """`NAME=VALUE` settings that cannot be read (a usage error); lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def parse_duration(text: str) -> float:
    """Seconds from `90`, `2.5`, `90s`, `5m`, `1m30s`, `1h` (also `1h30m`, `1.5m`).

    ASCII digits only, no spaces (controller.profiles.numbers); unit letters in either case.
    """
    if is_decimal(text):
        seconds = parse_decimal(text, f"duration '{text}'")
    else:
        t = text.lower() if text.isascii() else text
        match = _UNIT_DURATION.fullmatch(t) if t and len(t) <= MAX_NUMBER_TEXT else None
        if match is None or not any(match.groupdict().values()):
            try:   # the specific reason for spaces and other scripts' digits
                parse_decimal(text, f"duration '{text}'")
            except NumberError as exc:
                if exc.reason != NOT_A_NUMBER:
                    raise DurationError(f"{exc}; give {_DURATION_FORMS}") from None
            raise DurationError(f"duration '{text}' is not understood: give {_DURATION_FORMS}")
        seconds = sum(float(v) * _SECONDS_PER[k] for k, v in match.groupdict().items() if v)
    if not math.isfinite(seconds):
        raise DurationError(f"duration '{text}' is too large")
    if seconds <= 0:
        raise DurationError(f"duration '{text}' must be more than zero")
    return seconds


def parse_settings(pairs: Iterable[str]) -> dict[str, str]:
    """`NAME=VALUE` strings to a dict; raises SettingsError listing every bad one."""
    out: dict[str, str] = {}
    problems: list[str] = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep:
            problems.append(f"'{pair}': expected NAME=VALUE")
        elif not name:
            problems.append(f"'{pair}': the name before '=' is empty")
        elif not value.strip():
            problems.append(f"'{pair}': the value after '=' is empty")
        elif value != value.strip():
            # " 40" is not "40": a typed value is taken exactly as given, never trimmed.
            problems.append(f"'{pair}': the value after '=' has spaces around it")
        elif name in out:
            problems.append(f"'{name}' is set twice ({name}={out[name]} and {name}={value})")
        else:
            out[name] = value
    if problems:
        raise SettingsError(problems)
    return out


@dataclass(frozen=True)
class _Active:
    """The regimes that hold for a request: the profile's and the ceiling table's."""

    profile: tuple[str, ...]
    code: tuple[str, ...]


@dataclass(frozen=True)
class Problem:
    """One reason a prescription is refused."""

    name: str
    """The parameter, `duration_s`, or a derived quantity's name."""
    value: str
    message: str

    def __str__(self) -> str:
        return self.message


class PrescriptionRejected(Exception):
    """The request breaks one or more limits or rules; nothing was sent."""

    def __init__(self, profile_id: str, problems: list[Problem]) -> None:
        self.profile_id = profile_id
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))

    def messages(self) -> list[str]:
        return [p.message for p in self.problems]


@dataclass(frozen=True)
class AppliedLimit:
    """The effective limit a value met, each side naming the tier that set it."""

    low: Side | None = None
    high: Side | None = None
    allowed: tuple[float | str, ...] | None = None
    """A discrete set from the parameter's definition (numbers or choice names)."""

    def record(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.low is not None:
            out.update(min=self.low.value, min_source=self.low.source)
        if self.high is not None:
            out.update(max=self.high.value, max_source=self.high.source)
        if self.allowed is not None:
            out["allowed"] = list(self.allowed)
        return out


@dataclass(frozen=True)
class Prescription:
    """A validated request. Treat the dicts as read-only."""

    profile_id: str
    modality: str
    values: dict[str, Value]
    """Engineering units, defaults filled in; choices by name."""
    device_values: dict[str, float | int]
    """As `values`, with choice names mapped to the device's codes."""
    duration_s: float
    regimes: tuple[str, ...]
    """The profile's regimes that apply (their clinical limits and interlocks)."""
    limits: dict[str, AppliedLimit]
    """Every parameter and `duration_s`: the limit applied and its provenance."""
    derived: dict[str, float] = field(default_factory=dict)
    derived_limits: dict[str, AppliedLimit] = field(default_factory=dict)
    session_values: dict[str, float] = field(default_factory=dict)
    """Session variables the modality decided (`ramp_up_s`, `channel_mask`)."""
    facts: dict[str, float] = field(default_factory=dict)
    """Device facts the derived limits were checked with (`era_cm2`)."""
    pending: tuple[str, ...] = ()
    """Derived limits not yet checked for want of device facts: no output may start."""
    defaults: tuple[str, ...] = ()
    """Parameters the operator did not give (their defaults were used)."""
    ceiling_regimes: tuple[str, ...] = ()
    """Regimes of the code's ceiling table that apply (ceilings.py: cold)."""
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """One operator action: a TENS output is never restarted on the same id."""

    def record(self) -> dict[str, object]:
        """JSON-ready form for the session report and records."""
        return {
            "request_id": self.request_id, "profile": self.profile_id,
            "modality": self.modality, "values": dict(self.values),
            "device_values": dict(self.device_values), "duration_s": self.duration_s,
            "regimes": list(self.regimes), "ceiling_regimes": list(self.ceiling_regimes),
            "defaults": list(self.defaults),
            "limits": {k: v.record() for k, v in self.limits.items()},
            "derived": dict(self.derived),
            "derived_limits": {k: v.record() for k, v in self.derived_limits.items()},
            "session_values": dict(self.session_values), "facts": dict(self.facts),
            "pending": list(self.pending),
        }


def build_prescription(profile: Profile, settings: Mapping[str, str], duration_s: float,
                       *, facts: Mapping[str, float] | None = None) -> Prescription:
    """Validate a request against every limit; raises PrescriptionRejected with all problems.

    `facts` are device facts (ERA, longest ramp) when already known; without
    them, limits that need them are left in `pending` for `apply_device_facts`.
    """
    problems: list[Problem] = []
    params = profile.parameters
    for name in settings:
        if name not in params:
            known = ", ".join(sorted(params))
            problems.append(Problem(name, settings[name], f"unknown parameter '{name}' for "
                                    f"{profile.id} (known: {known})"))
    values: dict[str, Value] = {}
    shown: dict[str, str] = {}
    defaults: list[str] = []
    for name, param in params.items():
        if name in settings:
            text = settings[name]
            shown[name] = text
        elif param.default is not None:
            text = _default_text(param)
            shown[name] = f"{text} (default)"
            defaults.append(name)
        else:
            problems.append(Problem(name, "", f"{name} is required: it has no default "
                                    f"(give {name}=VALUE)"))
            continue
        parsed = _parse_value(name, param, text, shown[name])
        if isinstance(parsed, Problem):
            problems.append(parsed)
        else:
            values[name] = parsed

    as_numbers = {k: v if isinstance(v, str) else float(v) for k, v in values.items()}
    regimes = _Active(tuple(active_regimes(profile, as_numbers)),
                      tuple(active_ceiling_regimes(profile, as_numbers)))
    limits: dict[str, AppliedLimit] = {}
    bad = {p.name for p in problems}
    for name, param in params.items():
        limits[name] = _applied(profile, name, param, regimes)
        if name in values:
            found = _check_value(profile, name, param, values[name], shown[name], regimes)
            problems += found
            bad |= {p.name for p in found}
    limits[DURATION] = _applied(profile, DURATION, None, regimes)
    problems += _check_duration(profile, duration_s, regimes)

    valid = {k: v for k, v in values.items() if k not in bad}
    draft = Prescription(
        profile_id=profile.id, modality=profile.modality, values=values,
        device_values=_device_values(params, values), duration_s=duration_s,
        regimes=regimes.profile, ceiling_regimes=regimes.code, limits=limits,
        defaults=tuple(defaults))
    checked, more = _with_facts(profile, draft, valid, dict(facts or {}))
    problems += more
    if problems:
        raise PrescriptionRejected(profile.id, problems)
    return checked


def apply_device_facts(profile: Profile, prescription: Prescription,
                       facts: Mapping[str, float]) -> Prescription:
    """Check the derived limits again with facts from the identified device (ERA).

    Call after identification, before any output: returns the prescription with
    the derived quantities and facts recorded and `pending` empty, or raises
    PrescriptionRejected (also when a needed fact is still missing).
    """
    merged = {**prescription.facts, **facts}
    checked, problems = _with_facts(profile, prescription, prescription.values, merged)
    # After identification nothing may stay unchecked (docs/design.md §2.1).
    missing = ", ".join(sorted(modality_for(profile).needs_facts - set(merged)))
    problems += [Problem(name, "", f"{name} cannot be checked: the device did not report "
                         f"{missing or 'the facts it needs'}") for name in checked.pending]
    if problems:
        raise PrescriptionRejected(profile.id, problems)
    return checked


# -- the pieces ------------------------------------------------------------------
def _with_facts(profile: Profile, draft: Prescription, valid: Mapping[str, Value],
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


def _parse_value(name: str, param: Parameter, text: str, shown: str) -> Value | Problem:
    if param.type == "choice":
        choices = param.choices or {}
        if text not in choices:
            return Problem(name, text, f"{name}={shown} is not one of the choices: "
                           f"{', '.join(choices)}")
        return text
    if len(text) > MAX_NUMBER_TEXT:
        return Problem(name, text[:20] + "...", f"{name}: a value of {len(text)} characters "
                       f"is far beyond any limit (at most {MAX_NUMBER_TEXT} characters)")
    try:
        if param.type == "integer":
            return parse_integer(text, f"{name}={shown}")
        return parse_decimal(text, f"{name}={shown}")
    except NumberError as exc:
        whole = " (an integer parameter)" if exc.reason == NOT_WHOLE else ""
        return Problem(name, text, f"{exc}{whole}")


def _check_value(profile: Profile, name: str, param: Parameter, value: Value, shown: str,
                 regimes: _Active) -> list[Problem]:
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


def _check_duration(profile: Profile, duration_s: float, regimes: _Active) -> list[Problem]:
    shown = _fmt(duration_s)
    if not math.isfinite(duration_s) or duration_s <= 0:
        return [Problem(DURATION, shown, f"{DURATION}={shown} must be a positive duration")]
    return _check_bound(profile, DURATION, duration_s, shown, DURATION_UNIT, regimes)


def _check_bound(profile: Profile, name: str, value: float, shown: str, unit: str,
                 regimes: _Active) -> list[Problem]:
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


def _tiers(profile: Profile, name: str, regimes: _Active, word: str) -> list[tuple[str, float]]:
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


def _applied(profile: Profile, name: str, param: Parameter | None,
             regimes: _Active) -> AppliedLimit:
    bound: EffectiveBound | None = effective_bound(profile, name, regimes.profile,
                                                   regimes.code)
    allowed: tuple[float | str, ...] | None = None
    if param is not None and param.allowed is not None:
        allowed = tuple(param.allowed)
    elif param is not None and param.choices is not None:
        allowed = tuple(param.choices)
    return AppliedLimit(bound.low if bound else None, bound.high if bound else None, allowed)


def _device_values(params: Mapping[str, Parameter],
                   values: Mapping[str, Value]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for name, value in values.items():
        if isinstance(value, str):
            out[name] = (params[name].choices or {})[value]
        else:
            out[name] = value
    return out


def _default_text(param: Parameter) -> str:
    """A default as the operator would type it, exactly (repr keeps every digit)."""
    d = param.default
    if isinstance(d, float) and param.type == "integer" and d.is_integer():
        return str(int(d))
    return repr(d) if isinstance(d, float) else str(d)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _unit(unit: str) -> str:
    return f" {unit}" if unit else ""
