"""The operator's request as a validated prescription, before anything reaches a device.

Values are checked, never rounded or clipped (docs/design.md §2.6): a value off the step
grid, outside the effective limit or outside the allowed set is refused with a
message naming the parameter, the value and the limit. Every problem is
collected before `PrescriptionRejected` is raised. The prescription records the
effective limit each value met and which tier set it, and the derived
quantities (dose, current density) the modality computes from it.

The record is in controller.modality.prescription_record, the operator's text is read
by controller.modality.prescription_text and the limit checks are in
controller.modality.prescription_limits; their public names are imported here, where
callers have always found them.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.modality.limits import active_ceiling_regimes, active_regimes
from controller.modality.prescription_limits import (
    ALLOWED_REL_TOL,
    DERIVED_SOURCE,
    DURATION_UNIT,
    Active,
    applied_limit,
    check_duration,
    check_value,
    with_facts,
)
from controller.modality.prescription_record import (
    DERIVED_SLACK,
    AppliedLimit,
    Prescription,
    PrescriptionRejected,
    Problem,
)
from controller.modality.prescription_text import (
    DurationError,
    SettingsError,
    default_text,
    parse_duration,
    parse_settings,
    parse_value,
)
from controller.modality.rules import Value, modality_for
from controller.profiles.model import DURATION, Profile
from controller.profiles.sections import Parameter

__all__ = [
    "ALLOWED_REL_TOL", "DERIVED_SLACK", "DERIVED_SOURCE", "DURATION_UNIT",
    "AppliedLimit", "DurationError", "Prescription", "PrescriptionRejected", "Problem",
    "SettingsError", "apply_device_facts", "build_prescription", "parse_duration",
    "parse_settings",
]


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
            text = default_text(param)
            shown[name] = f"{text} (default)"
            defaults.append(name)
        else:
            problems.append(Problem(name, "", f"{name} is required: it has no default "
                                    f"(give {name}=VALUE)"))
            continue
        parsed = parse_value(name, param, text, shown[name])
        if isinstance(parsed, Problem):
            problems.append(parsed)
        else:
            values[name] = parsed

    as_numbers = {k: v if isinstance(v, str) else float(v) for k, v in values.items()}
    regimes = Active(tuple(active_regimes(profile, as_numbers)),
                      tuple(active_ceiling_regimes(profile, as_numbers)))
    limits: dict[str, AppliedLimit] = {}
    bad = {p.name for p in problems}
    for name, param in params.items():
        limits[name] = applied_limit(profile, name, param, regimes)
        if name in values:
            found = check_value(profile, name, param, values[name], shown[name], regimes)
            problems += found
            bad |= {p.name for p in found}
    limits[DURATION] = applied_limit(profile, DURATION, None, regimes)
    problems += check_duration(profile, duration_s, regimes)

    valid = {k: v for k, v in values.items() if k not in bad}
    draft = Prescription(
        profile_id=profile.id, modality=profile.modality, values=values,
        device_values=_device_values(params, values), duration_s=duration_s,
        regimes=regimes.profile, ceiling_regimes=regimes.code, limits=limits,
        defaults=tuple(defaults))
    checked, more = with_facts(profile, draft, valid, dict(facts or {}))
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
    checked, problems = with_facts(profile, prescription, prescription.values, merged)
    # After identification nothing may stay unchecked (docs/design.md §2.1).
    missing = ", ".join(sorted(modality_for(profile).needs_facts - set(merged)))
    problems += [Problem(name, "", f"{name} cannot be checked: the device did not report "
                         f"{missing or 'the facts it needs'}") for name in checked.pending]
    if problems:
        raise PrescriptionRejected(profile.id, problems)
    return checked


def _device_values(params: Mapping[str, Parameter],
                   values: Mapping[str, Value]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for name, value in values.items():
        if isinstance(value, str):
            out[name] = (params[name].choices or {})[value]
        else:
            out[name] = value
    return out
