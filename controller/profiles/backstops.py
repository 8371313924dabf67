"""Profile checks that protect the patient: the device backstops and the clinical ceilings.

What protects the patient must not rest on editable text (docs/design.md §2.11), so a
profile is refused unless its data proves:
- `arm` arms the device watchdog from `$watchdog_s`, and the device session timer
  is loaded from `$timer_s` (in `arm`, or in the `start` write itself for devices
  whose start command carries the duration), each into a field in seconds that no
  other operation writes anything else into;
- `stop` and `emergency_stop` each switch the output off (the rule is in
  docs/profiles.md, "Backstops");
- the telemetry the runtime check reads back (`remaining_s`, `elapsed_s`) is mapped;
- every clinical limit, regime, derived limit, interlock and rule stays inside the
  modality's ceilings (controller/modality/ceilings.py), and none a ceiling requires is missing.

Every problem is one line starting with the field path, so yaml_source gives it
the file's line number. The checks read a profile through `ProfileView`
(controller/profiles/view.py), so this module never imports the model that runs them.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.modality.ceilings import Ceiling, ceilings_for
from controller.modality.contract import (
    ARM_OPERATION,
    CONTRACTS,
    OFF_OPERATIONS,
    OFF_VARIABLES,
    SECONDS_UNIT,
    START_OPERATION,
    TIMER_VARIABLE,
    WATCHDOG_VARIABLE,
)
from controller.profiles.sections import Bound, Step
from controller.profiles.view import ProfileView
from protocols.map_common import Scalar
from protocols.map_framed import FramedMap
from protocols.map_scpi import ScpiMap

# Operations whose entries are never an "off" command: what identifies, sets up,
# starts, reads or services the device.
_NOT_OFF = ("identify", "configure", "arm", "start", "adjust", "read_telemetry",
            "clear_fault", "enter_calibration", "leave_calibration", "read_calibration",
            "write_calibration", "measure_output")
Target = tuple[str, str]   # (map entry, argument)


def check_backstops(profile: ProfileView) -> list[str]:
    ops = profile.operations.defined()
    out = _check_runtime_telemetry(profile)
    arm, start = ops.get(ARM_OPERATION), ops.get(START_OPERATION)
    if arm is None or start is None:
        return out   # the contract check reports the missing operation
    out += _check_armed(profile, ops, WATCHDOG_VARIABLE, {ARM_OPERATION: arm},
                        "does not arm the device watchdog: no write step takes "
                        f"${WATCHDOG_VARIABLE} (the watchdog ends the output if the "
                        "controller dies)")
    out += _check_armed(profile, ops, TIMER_VARIABLE,
                        {ARM_OPERATION: arm, START_OPERATION: start},
                        "does not load the device session timer: no write step takes "
                        f"${TIMER_VARIABLE} (in arm, or in start for a start command that "
                        "carries the duration: the timer ends the output if the "
                        "controller dies)")
    for op in OFF_OPERATIONS:
        steps = ops.get(op)
        if steps is not None:
            out += _check_off(profile, ops, op, steps, start)
    return out


def _check_runtime_telemetry(profile: ProfileView) -> list[str]:
    needed = CONTRACTS[profile.modality].runtime_telemetry
    return [f"telemetry: '{name}' is required for modality {profile.modality}: the "
            "session reads it back after start to "
            "prove the device timer runs and to reconcile the delivered time"
            for name in sorted(needed - set(profile.telemetry))]


def _targets(steps: list[Step], variable: str) -> list[tuple[int, str, str]]:
    return [(i, s.write, arg) for i, s in enumerate(steps) if s.write is not None
            for arg, v in s.args.items() if v == f"${variable}"]


def _check_armed(profile: ProfileView, ops: Mapping[str, list[Step]], variable: str,
                 where: Mapping[str, list[Step]], missing: str) -> list[str]:
    found = [(op, i, entry, arg) for op, steps in where.items()
             for i, entry, arg in _targets(steps, variable)]
    if not found:
        return [f"operations.{ARM_OPERATION}: {missing}"]
    out = []
    for op, i, entry, arg in found:
        spec = profile.protocol.arg_spec(entry, arg)
        unit = getattr(spec, "unit", None)
        if unit and unit != SECONDS_UNIT:   # a map without units proves nothing either way
            out.append(f"operations.{op}[{i}].args.{arg}: ${variable} is written into "
                       f"{entry}.{arg}, which is not a time in seconds (unit "
                       f"'{unit or ''}'): that is not the device's "
                       f"{'watchdog' if variable == WATCHDOG_VARIABLE else 'timer'}")
        out += _conflicts(ops, (entry, arg), variable)
    return out


def _conflicts(ops: Mapping[str, list[Step]], target: Target, variable: str) -> list[str]:
    """Any other value written into the field that carries a backstop."""
    out = []
    for op, steps in ops.items():
        for i, step in enumerate(steps):
            if step.write == target[0] and target[1] in step.args \
                    and step.args[target[1]] != f"${variable}":
                out.append(f"operations.{op}[{i}].args.{target[1]}: writes "
                           f"{step.args[target[1]]!r} into {target[0]}.{target[1]}, the "
                           f"field armed from ${variable}: a backstop field takes nothing "
                           "else")
    return out


def _check_off(profile: ProfileView, ops: Mapping[str, list[Step]], op: str, steps: list[Step],
               start: list[Step]) -> list[str]:
    pmap = profile.protocol
    settable = not isinstance(pmap, FramedMap)   # a framed command is never "set back"
    on_writes = {s.write: s.args for s in start if s.write is not None}
    out: list[str] = []
    last: dict[str, Mapping[str, Scalar]] = {}
    commands = False
    for i, step in enumerate(steps):
        if step.write is None:
            continue
        for arg, value in step.args.items():
            if isinstance(value, str) and value.startswith("$") \
                    and value[1:] not in OFF_VARIABLES:
                out.append(f"operations.{op}[{i}].args.{arg}: a stop may not write {value}: "
                           f"it takes literals and {', '.join(sorted(OFF_VARIABLES))} only "
                           "(a stop never sets an output level)")
        if step.write in on_writes:
            if step.args == on_writes[step.write]:
                out.append(f"operations.{op}[{i}].write: writes {step.write} exactly as "
                           f"{START_OPERATION} does, which switches the output on")
            last[step.write] = step.args
        elif _is_off_command(pmap, step.write, ops):
            commands = True
    set_back = settable and any(args != on_writes[e] and _literal(args)
                                for e, args in last.items())
    if not (set_back or commands):
        on = ", ".join(sorted(on_writes)) or "nothing"
        how = (f"a write of what {START_OPERATION} switches on ({on}) with a different "
               "literal value, or an action command (SCPI 'action: true') that no other "
               "operation uses") if settable else \
            "a command that returns no data and that no other operation uses"
        out.append(f"operations.{op}: does not switch the output off: it needs {how}")
    return out


def _literal(args: Mapping[str, Scalar]) -> bool:
    return all(not (isinstance(v, str) and v.startswith("$")) for v in args.values())


def _is_off_command(pmap: object, entry: str, ops: Mapping[str, list[Step]]) -> bool:
    """An action command no other operation uses (an SCPI ABORt, a framed ESTOP / STOP)."""
    used = {n for op in _NOT_OFF for s in ops.get(op, [])
            for n in ([s.write] if s.write else []) + list(s.read or [])}
    if entry in used:
        return False
    if isinstance(pmap, ScpiMap):
        cmd = pmap.commands.get(entry)
        return cmd is not None and cmd.action and cmd.set is None and cmd.query is None
    if isinstance(pmap, FramedMap):
        fcmd = pmap.commands.get(entry)
        return fcmd is not None and not fcmd.reply and not fcmd.needs_service
    return False


# -- clinical ceilings ---------------------------------------------------------------
def check_ceilings(profile: ProfileView) -> list[str]:
    table = ceilings_for(profile.modality)
    lim, mod, out = profile.limits, profile.modality, []
    for name, c in table.limits.items():
        if c.allowed is not None:
            out += _check_allowed(profile, name, c)
        else:
            tables = {"absolute": lim.absolute, "clinical": lim.clinical}
            out += _check_bound(tables, name, c, f"the clinical ceiling for {mod}")
    for regime in table.regimes:
        covering = {r: g for r, g in lim.regimes.items()
                    if g.when.parameter == regime.parameter and g.when.below is not None
                    and g.when.below >= regime.below}
        tables = {"absolute": lim.absolute, "clinical": lim.clinical,
                  **{f"regimes.{r}.clinical": g.clinical for r, g in covering.items()}}
        problems = [p for name, c in regime.limits.items()
                    for p in _check_bound(tables, name, c,
                                          f"the clinical ceiling for {mod} ({regime.name})")]
        if problems and not covering:
            needs = " and ".join(f"{n} {_side(c)}" for n, c in regime.limits.items())
            out.append(f"limits.regimes: no regime covers {regime.name} therapy "
                       f"({regime.parameter} below {regime.below:g}), and the clinical ceiling "
                       f"for {mod} ({regime.name}) needs {needs}")
        else:
            out += problems
    for name, c in table.derived.items():
        bound = lim.derived.get(name)
        out += _check_value(f"limits.derived.{name}", None if bound is None else bound.max,
                            c, f"the clinical ceiling for {mod}")
    for name, c in table.interlocks.items():
        out += _check_value(f"limits.interlocks.{name}", lim.interlocks.get(name), c,
                            f"the clinical ceiling for {mod}")
        for r, g in lim.regimes.items():
            if name in g.interlocks:
                out += _check_value(f"limits.regimes.{r}.interlocks.{name}",
                                    g.interlocks[name], c, f"the clinical ceiling for {mod}")
    for name, c in table.rules.items():
        out += _check_value(f"rules.{name}", profile.rules.get(name), c,
                            f"the clinical ceiling for {mod}")
    return out


def _check_allowed(profile: ProfileView, name: str, c: Ceiling) -> list[str]:
    param = profile.parameters.get(name)
    if param is None or c.allowed is None:
        return []   # the contract check reports a missing parameter
    extra = [a for a in param.allowed or [] if a not in c.allowed]
    if param.allowed is None:
        return [f"parameters.{name}: 'allowed' is required within the clinical ceiling for "
                f"{profile.modality}: {c.text()}"]
    if extra:
        return [f"parameters.{name}.allowed: {', '.join(f'{a:g}' for a in extra)} "
                f"{'is' if len(extra) == 1 else 'are'} outside the clinical ceiling for "
                f"{profile.modality}: {c.text()}"]
    return []


def _check_bound(tables: Mapping[str, Mapping[str, Bound]], name: str, c: Ceiling,
                 what: str) -> list[str]:
    """The tightest of the tables' bounds on `name` must lie inside the ceiling."""
    out = []
    for side, better in (("max", min), ("min", max)):
        limit = getattr(c, side)
        if limit is None:
            continue
        stated = [(getattr(t[name], side), where) for where, t in tables.items()
                  if name in t and getattr(t[name], side) is not None]
        if not stated:
            out.append(f"limits.clinical.{name}: a {side} is required: {what} is "
                       f"{_side(c, side)}")
            continue
        # On a tie the later (clinical, regime) tier is named: that is what was edited.
        value = better(v for v, _ in stated)
        where = [w for v, w in stated if v == value][-1]
        past = value > limit if side == "max" else value < limit
        if past:
            word = "above" if side == "max" else "below"
            out.append(f"limits.{where}.{name}: {side} {value:g}{_u(c.unit)} is {word} "
                       f"{what}, {limit:g}{_u(c.unit)}")
    return out


def _check_value(path: str, value: float | None, c: Ceiling, what: str) -> list[str]:
    if value is None:
        return [f"{path}: required: {what} is {_side(c)}"]
    if c.max is not None and value > c.max:
        return [f"{path}: {value:g}{_u(c.unit)} is above {what}, {c.max:g}{_u(c.unit)}"]
    if c.min is not None and value < c.min:
        return [f"{path}: {value:g}{_u(c.unit)} is below {what}, {c.min:g}{_u(c.unit)}"]
    return []


def _side(c: Ceiling, side: str | None = None) -> str:
    parts = []
    if c.min is not None and side in (None, "min"):
        parts.append(f"at least {c.min:g}{_u(c.unit)}")
    if c.max is not None and side in (None, "max"):
        parts.append(f"at most {c.max:g}{_u(c.unit)}")
    return " and ".join(parts)


def _u(unit: str) -> str:
    return f" {unit}" if unit else ""
