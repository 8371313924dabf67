"""The profile checks that span sections: the modality contract, limits against parameters,
and every operation, telemetry source, fault table, identity and calibration reading
against the protocol map.

`profile_problems` runs every cross-section check, the backstops and the ceilings in a
fixed order; `Profile` raises the problems it returns. Every problem is one line starting
with the field path, so yaml_source gives it the file's line number.
"""

from __future__ import annotations

from controller.modality.contract import (
    CONTRACTS,
    FAULT_CODE_TELEMETRY,
    FLAG_CHECKED_TELEMETRY,
    NUMERIC_CHECKED_TELEMETRY,
    OFF_OPERATIONS,
)
from controller.profiles.backstops import check_backstops, check_ceilings
from controller.profiles.ranges import check_ranges
from controller.profiles.sections import CALIBRATION_READINGS, Bound, Calibration, Identity, Step
from controller.profiles.templates import template_names, template_values
from controller.profiles.values import DURATION, on_step, within
from controller.profiles.view import ProfileView
from protocols.map_framed import FramedMap
from protocols.map_modbus import ModbusMap
from protocols.map_scpi import ScpiMap


def profile_problems(profile: ProfileView) -> list[str]:
    """Every cross-section problem of a profile whose sections are each valid."""
    problems: list[str] = []
    problems += _check_contract(profile)
    problems += _check_limits(profile)
    problems += _check_defaults(profile)
    problems += _check_operations(profile)
    problems += _check_telemetry(profile)
    problems += _check_faults(profile)
    problems += _check_checked_telemetry(profile)
    if not problems:   # the ranges read operations, limits and parameters known good
        problems += check_ranges(profile)
    problems += check_backstops(profile)
    problems += check_ceilings(profile)
    if profile.identity is not None:
        problems += _check_identity(profile, profile.identity)
    if profile.calibration is not None:
        problems += _check_calibration(profile, profile.calibration)
    return problems


def _check_contract(profile: ProfileView) -> list[str]:
    c = CONTRACTS[profile.modality]
    out = []
    for name in sorted(c.parameters - set(profile.parameters)):
        out.append(f"parameters: '{name}' is required for modality {profile.modality}")
    for name in sorted(c.required_operations - set(profile.operations.defined())):
        why = ": it must switch the output off" if name in OFF_OPERATIONS else ""
        out.append(f"operations: '{name}' is required{why}")
    # The runtime telemetry is reported by check_backstops, saying why it is needed.
    for name in sorted(c.telemetry - c.runtime_telemetry - set(profile.telemetry)):
        out.append(f"telemetry: '{name}' is required for modality {profile.modality}")
    for section, names, known in (
        ("limits.derived", profile.limits.derived, c.derived_limits),
        ("limits.interlocks", profile.limits.interlocks, c.interlocks),
        ("rules", profile.rules, c.rules),
        ("safety.tolerances", profile.safety.tolerances, c.tolerances),
    ):
        for name in sorted(set(names) - known):
            allowed = ", ".join(sorted(known)) or "none"
            out.append(f"{section}: unknown name '{name}' for modality "
                       f"{profile.modality} (allowed: {allowed})")
    for rname, regime in profile.limits.regimes.items():
        for name in sorted(set(regime.interlocks) - c.interlocks):
            out.append(f"limits.regimes.{rname}.interlocks: unknown name '{name}'")
    return out


def _check_limits(profile: ProfileView) -> list[str]:
    lim, out = profile.limits, []
    limitable = set(profile.parameters) | {DURATION}
    if DURATION not in lim.absolute:
        out.append(f"limits.absolute: '{DURATION}' is required (the device timer range)")
    for name, p in profile.parameters.items():
        if p.type != "choice" and p.allowed is None and name not in lim.absolute:
            out.append(f"limits.absolute: numeric parameter '{name}' needs a range")
    sections: list[tuple[str, dict[str, Bound]]] = [
        ("limits.absolute", lim.absolute), ("limits.clinical", lim.clinical)]
    sections += [(f"limits.regimes.{r}.clinical", g.clinical)
                 for r, g in lim.regimes.items()]
    for where, table in sections:
        for name, bound in table.items():
            if name not in limitable:
                out.append(f"{where}: '{name}' is not a parameter")
                continue
            absolute = lim.absolute.get(name)
            if where != "limits.absolute" and absolute is not None \
                    and not bound.inside(absolute):
                out.append(f"{where}.{name}: clinical limit {bound.text()} is outside "
                           f"the absolute limit {absolute.text()}")
    for rname, regime in lim.regimes.items():
        if regime.when.parameter not in profile.parameters:
            out.append(f"limits.regimes.{rname}.when: '{regime.when.parameter}' "
                       "is not a parameter")
    return out


def _check_defaults(profile: ProfileView) -> list[str]:
    out = []
    for name, p in profile.parameters.items():
        if not isinstance(p.default, (int, float)):
            continue
        for tier in ("absolute", "clinical"):
            bound = getattr(profile.limits, tier).get(name)
            if bound is not None and not within(p.default, bound):
                out.append(f"parameters.{name}.default: {p.default:g} is outside the "
                           f"{tier} limit {bound.text()}")
        base = profile.limits.absolute.get(name)
        if p.step and base is not None and base.min is not None \
                and not on_step(p.default, base.min, p.step):
            out.append(f"parameters.{name}.default: {p.default:g} is not on the "
                       f"{p.step:g} step from {base.min:g}")
    return out


def _check_operations(profile: ProfileView) -> list[str]:
    out: list[str] = []
    variables = profile.variable_names()
    for op_name, steps in profile.operations.defined().items():
        results: set[str] = set()
        for i, step in enumerate(steps):
            where = f"operations.{op_name}[{i}]"
            out += _check_step(profile, step, where, variables, results)
    return out


def _check_step(profile: ProfileView, step: Step, where: str, variables: set[str],
                results: set[str]) -> list[str]:
    pmap, out = profile.protocol, []
    entries = pmap.entry_names()
    if step.write is not None:
        takes = pmap.write_args(step.write)
        if step.write not in entries:
            out.append(f"{where}.write: '{step.write}' is not in the protocol map")
        elif takes is None:
            out.append(f"{where}.write: '{step.write}' cannot be written")
        else:
            for arg in sorted(set(step.args) - takes):
                out.append(f"{where}.args: '{step.write}' takes no argument '{arg}' "
                           f"(takes: {', '.join(sorted(takes)) or 'none'})")
            for arg in sorted(takes - set(step.args) - _optional_args(pmap, step.write)):
                out.append(f"{where}.args: '{arg}' is missing for '{step.write}'")
            results |= pmap.result_keys(step.write)
    for name in step.read or []:
        keys = pmap.result_keys(name)
        if not keys:
            out.append(f"{where}.read: '{name}' is not a readable entry of the "
                       "protocol map")
        results |= keys
    for arg, value in step.args.items():
        if isinstance(value, str) and value.startswith("$") \
                and value[1:] not in variables:
            out.append(f"{where}.args.{arg}: unknown variable '{value}'")
    for key in step.expect:
        if key not in results:
            out.append(f"{where}.expect: '{key}' is not a result of this operation")
    return out


def _check_calibration(profile: ProfileView, cal: Calibration) -> list[str]:
    entries = profile.protocol.entry_names()
    out = [f"calibration.adjusts: '{a}' is not an entry of the protocol map"
           for a in cal.adjusts if a not in entries]
    available = profile.operation_results("read_calibration") | \
        profile.operation_results("measure_output")
    for name, src in cal.readings.items():
        if name not in CALIBRATION_READINGS:
            out.append(f"calibration.readings: unknown name '{name}' (allowed: "
                       f"{', '.join(sorted(CALIBRATION_READINGS))})")
        for expanded in profile.expand_template(src):
            if expanded not in available:
                out.append(f"calibration.readings.{name}: source '{expanded}' is not read "
                           "by operations.read_calibration or measure_output")
    return out


def _check_identity(profile: ProfileView, ident: Identity) -> list[str]:
    available = profile.operation_results("identify")
    return [f"identity.{field}: '{key}' is not a result of operations.identify"
            for field, key in ident.result_keys() if key not in available]


def _check_telemetry(profile: ProfileView) -> list[str]:
    available = profile.operation_results("read_telemetry")
    out = []
    for name in profile.telemetry:
        src = profile.telemetry_source(name).source
        for var in template_names(src):
            if not template_values(profile.parameters, var):
                out.append(f"telemetry.{name}: '{{{var}}}' is not a parameter with "
                           "allowed values or a default")
        for expanded in profile.expand_template(src):
            if expanded not in available:
                out.append(f"telemetry.{name}: source '{expanded}' is not read by "
                           "operations.read_telemetry")
    return out


def _check_faults(profile: ProfileView) -> list[str]:
    out = []
    if FAULT_CODE_TELEMETRY in profile.telemetry and FAULT_CODE_TELEMETRY not in profile.faults:
        out.append(f"faults: telemetry '{FAULT_CODE_TELEMETRY}' needs a table "
                   f"(faults.{FAULT_CODE_TELEMETRY}) saying what each code means and its "
                   "class; the controller knows no device's codes")
    for name, table in profile.faults.items():
        if name not in profile.telemetry:
            out.append(f"faults.{name}: '{name}' is not a telemetry name")
        if not any(c.class_ == "none" for c in table.values()):
            out.append(f"faults.{name}: no code has class 'none', so every reading "
                       "would be a fault; give the no-fault code (0: {label: none, "
                       "class: none})")
    return out


def _check_checked_telemetry(profile: ProfileView) -> list[str]:
    """Telemetry a safety check reads must arrive as a number (or a flag), or be mapped to
    one: text would silently read as no fault."""
    out = []
    for name in sorted(set(profile.telemetry) & (NUMERIC_CHECKED_TELEMETRY |
                                                 FLAG_CHECKED_TELEMETRY)):
        src = profile.telemetry_source(name)
        numeric = name in NUMERIC_CHECKED_TELEMETRY
        want = "a number" if numeric else "true/false or a number"
        if src.map is not None:
            bad = [k for k, v in src.map.items()
                   if (numeric and (isinstance(v, (bool, str))))
                   or (not numeric and isinstance(v, str))]
            if bad:
                out.append(f"telemetry.{name}.map: a safety check reads {name} as {want}; "
                           f"'{bad[0]}' maps to {src.map[bad[0]]!r}")
            continue
        for key in profile.expand_template(src.source):
            kind = profile.protocol.result_kind(key)
            if kind == "text" or (numeric and kind == "flag"):
                out.append(f"telemetry.{name}: source '{key}' is {kind}, but a safety "
                           f"check reads {name} as {want}: map each value "
                           f"(telemetry.{name}.map) or read a numeric field")
    return out


def _optional_args(pmap: ModbusMap | ScpiMap | FramedMap, entry: str) -> set[str]:
    if isinstance(pmap, ScpiMap):
        cmd = pmap.commands[entry]
        return {f.name for f in cmd.set or [] if f.optional}
    return set()
