"""The device profile: everything about one device model, as validated data.

Field-level rules live on the section models; this module adds the checks that
span sections: the modality contract, limits against parameters, and every
operation and telemetry source against the protocol map.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field, model_validator

from controller.modality.contract import (
    CONTRACTS,
    FAULT_CODE_TELEMETRY,
    FLAG_CHECKED_TELEMETRY,
    NUMERIC_CHECKED_TELEMETRY,
    OFF_OPERATIONS,
    SESSION_VARIABLES,
    Modality,
)
from controller.profiles.backstops import check_backstops, check_ceilings
from controller.profiles.grid import INTEGRAL_TYPES as INTEGRAL_TYPES  # re-exported
from controller.profiles.grid import first_off_grid
from controller.profiles.sections import (
    CALIBRATION_READINGS,
    Bound,
    Calibration,
    FaultCode,
    FaultTable,
    Identity,
    Limits,
    Link,
    Operations,
    Parameter,
    Safety,
    Step,
    TelemetrySource,
)
from protocols.map_common import Identifier, Scalar, StrictModel, ValueSpec, scalar_text
from protocols.map_framed import FramedMap
from protocols.map_modbus import ModbusMap
from protocols.map_scpi import ScpiMap

PROFILE_FORMAT = 1
DURATION = "duration_s"
_TEMPLATE = re.compile(r"\{([a-z][a-z0-9_]*)\}")
# Relative slack when checking that a value sits on a parameter's step grid.
STEP_SLACK = 1e-6

ProtocolMap = Annotated[ModbusMap | ScpiMap | FramedMap, Field(discriminator="family")]


class Profile(StrictModel):
    profile_format: Literal[1] = 1
    spec_version: str = Field(min_length=1)
    """Revision of the vendor's interface document this profile follows."""
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=40)
    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1)
    modality: Modality
    description: str = ""
    link: Link
    protocol: ProtocolMap
    operations: Operations
    telemetry: dict[Identifier, str | TelemetrySource]
    faults: dict[Identifier, FaultTable] = Field(default_factory=dict)
    """Per fault-code telemetry name: what each code means and its class."""
    parameters: dict[Identifier, Parameter]
    limits: Limits
    rules: dict[Identifier, float] = Field(default_factory=dict)
    safety: Safety
    calibration: Calibration | None = None
    identity: Identity | None = None
    """Which `identify` results hold the model, serial number and firmware."""

    @model_validator(mode="after")
    def _cross_checks(self) -> Profile:
        problems: list[str] = []
        problems += self._check_contract()
        problems += self._check_limits()
        problems += self._check_defaults()
        problems += self._check_operations()
        problems += self._check_telemetry()
        problems += self._check_faults()
        problems += self._check_checked_telemetry()
        if not problems:
            problems += self._check_ranges()
        problems += check_backstops(self)
        problems += check_ceilings(self)
        if self.identity is not None:
            problems += self._check_identity(self.identity)
        if self.calibration is not None:
            problems += self._check_calibration(self.calibration)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- helpers used by the controller ---------------------------------------
    def telemetry_source(self, name: str) -> TelemetrySource:
        src = self.telemetry[name]
        return TelemetrySource(source=src) if isinstance(src, str) else src

    def variable_names(self) -> set[str]:
        return set(self.parameters) | SESSION_VARIABLES

    def fault(self, telemetry: str, code: int) -> FaultCode | None:
        """What a fault code of a telemetry value means (None: the profile lists no such
        code, which the checks treat as an unknown device fault)."""
        return self.faults.get(telemetry, {}).get(code)

    # -- cross-section checks ---------------------------------------------------
    def _check_contract(self) -> list[str]:
        c = CONTRACTS[self.modality]
        out = []
        for name in sorted(c.parameters - set(self.parameters)):
            out.append(f"parameters: '{name}' is required for modality {self.modality}")
        for name in sorted(c.required_operations - set(self.operations.defined())):
            why = ": it must switch the output off" if name in OFF_OPERATIONS else ""
            out.append(f"operations: '{name}' is required{why}")
        # The runtime telemetry is reported by check_backstops, saying why it is needed.
        for name in sorted(c.telemetry - c.runtime_telemetry - set(self.telemetry)):
            out.append(f"telemetry: '{name}' is required for modality {self.modality}")
        for section, names, known in (
            ("limits.derived", self.limits.derived, c.derived_limits),
            ("limits.interlocks", self.limits.interlocks, c.interlocks),
            ("rules", self.rules, c.rules),
            ("safety.tolerances", self.safety.tolerances, c.tolerances),
        ):
            for name in sorted(set(names) - known):
                allowed = ", ".join(sorted(known)) or "none"
                out.append(f"{section}: unknown name '{name}' for modality "
                           f"{self.modality} (allowed: {allowed})")
        for rname, regime in self.limits.regimes.items():
            for name in sorted(set(regime.interlocks) - c.interlocks):
                out.append(f"limits.regimes.{rname}.interlocks: unknown name '{name}'")
        return out

    def _check_limits(self) -> list[str]:
        lim, out = self.limits, []
        limitable = set(self.parameters) | {DURATION}
        if DURATION not in lim.absolute:
            out.append(f"limits.absolute: '{DURATION}' is required (the device timer range)")
        for name, p in self.parameters.items():
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
            if regime.when.parameter not in self.parameters:
                out.append(f"limits.regimes.{rname}.when: '{regime.when.parameter}' "
                           "is not a parameter")
        return out

    def _check_defaults(self) -> list[str]:
        out = []
        for name, p in self.parameters.items():
            if not isinstance(p.default, (int, float)):
                continue
            for tier in ("absolute", "clinical"):
                bound = getattr(self.limits, tier).get(name)
                if bound is not None and not within(p.default, bound):
                    out.append(f"parameters.{name}.default: {p.default:g} is outside the "
                               f"{tier} limit {bound.text()}")
            base = self.limits.absolute.get(name)
            if p.step and base is not None and base.min is not None \
                    and not on_step(p.default, base.min, p.step):
                out.append(f"parameters.{name}.default: {p.default:g} is not on the "
                           f"{p.step:g} step from {base.min:g}")
        return out

    def _check_operations(self) -> list[str]:
        out: list[str] = []
        variables = self.variable_names()
        for op_name, steps in self.operations.defined().items():
            results: set[str] = set()
            for i, step in enumerate(steps):
                where = f"operations.{op_name}[{i}]"
                out += self._check_step(step, where, variables, results)
        return out

    def _check_step(self, step: Step, where: str, variables: set[str],
                    results: set[str]) -> list[str]:
        pmap, out = self.protocol, []
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

    def _check_calibration(self, cal: Calibration) -> list[str]:
        entries = self.protocol.entry_names()
        out = [f"calibration.adjusts: '{a}' is not an entry of the protocol map"
               for a in cal.adjusts if a not in entries]
        available = self.operation_results("read_calibration") | \
            self.operation_results("measure_output")
        for name, src in cal.readings.items():
            if name not in CALIBRATION_READINGS:
                out.append(f"calibration.readings: unknown name '{name}' (allowed: "
                           f"{', '.join(sorted(CALIBRATION_READINGS))})")
            for expanded in self.expand_template(src):
                if expanded not in available:
                    out.append(f"calibration.readings.{name}: source '{expanded}' is not read "
                               "by operations.read_calibration or measure_output")
        return out

    def _check_identity(self, ident: Identity) -> list[str]:
        available = self.operation_results("identify")
        return [f"identity.{field}: '{key}' is not a result of operations.identify"
                for field, key in ident.result_keys() if key not in available]

    def operation_results(self, op_name: str) -> set[str]:
        """Every result key an operation's steps yield."""
        out: set[str] = set()
        for step in self.operations.defined().get(op_name, []):
            for name in step.read or []:
                out |= self.protocol.result_keys(name)
            if step.write:
                out |= self.protocol.result_keys(step.write)
        return out

    def _check_ranges(self) -> list[str]:
        """Every value the controller may write for a `$variable` fits the device field."""
        out: list[str] = []
        for op, steps in self.operations.defined().items():
            for i, step in enumerate(steps):
                if step.write is None:
                    continue
                for arg, ref in step.args.items():
                    if not (isinstance(ref, str) and ref.startswith("$")):
                        continue
                    spec = self.protocol.arg_spec(step.write, arg)
                    if spec is None:
                        continue
                    integral = _integral(spec)
                    param = self.parameters.get(ref[1:])
                    before = len(out)
                    if integral and param is not None and param.step is not None \
                            and not _whole(param.step / spec.scale):
                        out.append(
                            f"parameters.{ref[1:]}.step: {param.step:g} is finer than "
                            f"{step.write}.{arg} can carry (steps of {spec.scale:g})")
                    for value, why in self._possible_values(ref[1:]):
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
                    off = first_off_grid(param, self.limits.absolute.get(ref[1:]), spec)
                    if off is not None:
                        out.append(
                            f"operations.{op}[{i}].args.{arg}: {ref} may be {off[0]:g} "
                            f"(on the operator's grid of {ref[1:]}), which "
                            f"{step.write}.{arg} cannot carry: {off[1]} "
                            f"({_engineering_range(spec)})")
        return out

    def _possible_values(self, var: str) -> list[tuple[float, str]]:
        """The extreme values the controller may send for a variable, and why."""
        lim, p = self.limits, self.parameters.get(var)
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
            dur, margin = lim.absolute.get(DURATION), self.safety.timer_margin_s
            return [] if dur is None else [
                (float(math.ceil(b + margin)), f"{DURATION} {side} {b:g} + margin {margin:g}")
                for b, side in ((dur.min, "min"), (dur.max, "max")) if b is not None]
        if var == "watchdog_s":
            return [(self.safety.watchdog_s, "safety.watchdog_s")]
        if var == "channel_mask" and "channel" in self.parameters:
            chan = self.parameters["channel"]
            return [(float(1 << int(c)), "a channel") for c in chan.allowed or []]
        if var == "ramp_up_s" and "max_ramp_s" in self.rules:
            return [(0.0, "no ramp"), (self.rules["max_ramp_s"], "rules.max_ramp_s")]
        return []

    def _check_telemetry(self) -> list[str]:
        available = self.operation_results("read_telemetry")
        out = []
        for name in self.telemetry:
            src = self.telemetry_source(name).source
            for var in _TEMPLATE.findall(src):
                if not self._template_values(var):
                    out.append(f"telemetry.{name}: '{{{var}}}' is not a parameter with "
                               "allowed values or a default")
            for expanded in self.expand_template(src):
                if expanded not in available:
                    out.append(f"telemetry.{name}: source '{expanded}' is not read by "
                               "operations.read_telemetry")
        return out

    def _check_faults(self) -> list[str]:
        out = []
        if FAULT_CODE_TELEMETRY in self.telemetry and FAULT_CODE_TELEMETRY not in self.faults:
            out.append(f"faults: telemetry '{FAULT_CODE_TELEMETRY}' needs a table "
                       f"(faults.{FAULT_CODE_TELEMETRY}) saying what each code means and its "
                       "class; the controller knows no device's codes")
        for name, table in self.faults.items():
            if name not in self.telemetry:
                out.append(f"faults.{name}: '{name}' is not a telemetry name")
            if not any(c.class_ == "none" for c in table.values()):
                out.append(f"faults.{name}: no code has class 'none', so every reading "
                           "would be a fault; give the no-fault code (0: {label: none, "
                           "class: none})")
        return out

    def _check_checked_telemetry(self) -> list[str]:
        """Telemetry a safety check reads must arrive as a number (or a flag), or be mapped to
        one: text would silently read as no fault."""
        out = []
        for name in sorted(set(self.telemetry) & (NUMERIC_CHECKED_TELEMETRY |
                                                  FLAG_CHECKED_TELEMETRY)):
            src = self.telemetry_source(name)
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
            for key in self.expand_template(src.source):
                kind = self.protocol.result_kind(key)
                if kind == "text" or (numeric and kind == "flag"):
                    out.append(f"telemetry.{name}: source '{key}' is {kind}, but a safety "
                               f"check reads {name} as {want}: map each value "
                               f"(telemetry.{name}.map) or read a numeric field")
        return out

    def expand_template(self, text: str) -> list[str]:
        """Every concrete form of `text` over the allowed values of its `{param}`s."""
        forms = [text]
        for var in _TEMPLATE.findall(text):
            values = self._template_values(var)
            forms = [f.replace("{" + var + "}", _fmt(v)) for f in forms for v in values]
        return forms

    def _template_values(self, var: str) -> list[float | str]:
        p = self.parameters.get(var)
        if p is None:
            return []
        if p.allowed:
            return list(p.allowed)
        return [p.default] if p.default is not None else []


class IdentityError(ValueError):
    """The identification results cannot give the device's identity."""


# Serial words are unsigned 16-bit (a Modbus register each).
WORD_BITS = 16
WORD_MAX = (1 << WORD_BITS) - 1


def device_identity(profile: Profile, identify_results: Mapping[str, Scalar]) -> dict[str, str]:
    """{"model", "serial", "firmware"} as text, from the `identify` operation's results.

    Text results are kept as the device reports them (a model name); numbers become
    decimal text (a model register 0x4843 -> "18499", a firmware
    register 105 -> "105"). A `serial` list is 16-bit words, most significant first,
    combined into one number; a `firmware` list is version parts joined with dots.
    Raises IdentityError when the profile has no `identity` section or a result is
    missing or of the wrong kind.
    """
    ident = profile.identity
    if ident is None:
        raise IdentityError(f"profile {profile.id} has no identity section: the device's "
                            "model and serial number cannot be read")

    def get(key: str) -> Scalar:
        if key not in identify_results:
            raise IdentityError(f"identification gave no '{key}'")
        return identify_results[key]

    serial: str
    if isinstance(ident.serial, str):
        serial = scalar_text(get(ident.serial))
    else:
        number = 0
        for key in ident.serial:
            word = get(key)
            if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= WORD_MAX:
                raise IdentityError(f"serial word '{key}' is {word!r}, not an unsigned "
                                    f"{WORD_BITS}-bit number")
            number = (number << WORD_BITS) | word
        serial = str(number)
    firmware = scalar_text(get(ident.firmware)) if isinstance(ident.firmware, str) \
        else ".".join(scalar_text(get(k)) for k in ident.firmware)
    return {"model": scalar_text(get(ident.model)), "serial": serial, "firmware": firmware}




def _integral(spec: ValueSpec) -> bool:
    return getattr(spec, "type", None) in INTEGRAL_TYPES


def _whole(x: float) -> bool:
    return abs(x - round(x)) < 1e-6


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


def within(value: float, bound: Bound) -> bool:
    return (bound.min is None or value >= bound.min) and \
        (bound.max is None or value <= bound.max)


def on_step(value: float, origin: float, step: float) -> bool:
    n = (value - origin) / step
    return abs(n - round(n)) <= STEP_SLACK * max(1.0, abs(n))


def _fmt(value: float | str) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _optional_args(pmap: ModbusMap | ScpiMap | FramedMap, entry: str) -> set[str]:
    if isinstance(pmap, ScpiMap):
        cmd = pmap.commands[entry]
        return {f.name for f in cmd.set or [] if f.optional}
    return set()
