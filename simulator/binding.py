"""What the wire means, derived from a device profile alone.

The simulator reads the same profile as the controller, but only as data: the
operations say which map entry carries which variable (`setpoint` carries
`$temperature_c`) or triggers which action (`output_enable = 1` is `start`),
and the telemetry and calibration sections say which read result shows which
modality quantity. That is enough for a new device of a known family to be
simulated from its profile with no code. The codecs are the simulator's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from controller.profiles.model import Profile
from controller.profiles.sections import Step
from protocols.map_common import Scalar

# Write actions the device models understand, in the order a write that
# belongs to several operations is attributed (HC-200 `output_enable = 0` is
# both `stop` and `emergency_stop`: it is a stop).
CONTROL_ACTIONS = ("start", "stop", "emergency_stop", "clear_fault", "enter_calibration",
                   "leave_calibration")
SET = "set"
# Fallback identity for fields no profile binds (serial numbers, firmware).
SIM_IDENTITY: dict[str, Scalar] = {
    "serial": 1001, "firmware": "1.00", "fw_major": 1, "fw_minor": 0,
    "serial_hi": 0, "serial_lo": 1001,
}


@dataclass(frozen=True)
class WriteMeaning:
    action: str
    """One of CONTROL_ACTIONS, or SET for a write that only carries values."""
    values: dict[str, Scalar]
    """Variable name -> engineering value, from `$variable` arguments."""
    ops: frozenset[str]
    """Every operation this write belongs to (configure, adjust, arm...)."""


@dataclass(frozen=True)
class ReadSource:
    """Where the value of one read result comes from."""

    kind: str
    """telemetry | reading | variable | switch | expect | identity | stored"""
    name: str = ""
    channel: int | None = None
    inverse: dict[str, str] | None = None
    """Semantic value (as text) -> raw text, for mapped telemetry."""
    on_off: tuple[Scalar, Scalar] | None = None
    literal: Scalar | None = None


@dataclass
class _Writer:
    op: str
    step: Step


@dataclass
class Binding:
    profile: Profile
    writers: dict[str, list[_Writer]] = field(default_factory=dict)
    readers: dict[str, list[_Writer]] = field(default_factory=dict)
    sources: dict[str, ReadSource] = field(default_factory=dict)

    @classmethod
    def of(cls, profile: Profile) -> Binding:
        b = cls(profile)
        for op, steps in profile.operations.defined().items():
            for step in steps:
                if step.write:
                    b.writers.setdefault(step.write, []).append(_Writer(op, step))
                for name in step.read or []:
                    b.readers.setdefault(name, []).append(_Writer(op, step))
        b._bind_reads()
        return b

    # -- writes -------------------------------------------------------------
    def interpret_write(self, entry: str, args: dict[str, Scalar]) -> WriteMeaning | None:
        """What a write means; None when no operation accepts these literal values."""
        writers = self.writers.get(entry)
        if not writers:
            return WriteMeaning(SET, {}, frozenset())
        matched = [w for w in writers if _literals_match(w.step, args)]
        if not matched:
            return None
        ops = frozenset(w.op for w in matched)
        action = next((a for a in CONTROL_ACTIONS if a in ops), SET)
        return WriteMeaning(action, _variables(matched, args), ops)

    def read_context(self, entry: str, args: dict[str, Scalar]) -> WriteMeaning:
        """Operations a read belongs to, and the variables its arguments carry."""
        readers = self.readers.get(entry, [])
        return WriteMeaning(SET, _variables(readers, args), frozenset(r.op for r in readers))

    # -- reads --------------------------------------------------------------
    def source(self, key: str) -> ReadSource:
        return self.sources.get(key) or self._fallback(key)

    def _bind_reads(self) -> None:
        prof = self.profile
        # Lowest priority first: later bindings overwrite earlier ones.
        for entry, writers in self.writers.items():
            for w in writers:
                for arg, value in w.step.args.items():
                    if isinstance(value, str) and value.startswith("$"):
                        for key in _keys_for(prof, entry, arg):
                            self.sources[key] = ReadSource("variable", value[1:])
            switch = _switch_literals(writers)
            if switch is not None:
                kind, on_off = switch
                for key in _keys_for(prof, entry, next(iter(writers[0].step.args), "value")):
                    self.sources[key] = ReadSource("switch", kind, on_off=on_off)
        for step in prof.operations.identify or []:
            for key, value in step.expect.items():
                self.sources[key] = ReadSource("expect", literal=value)
        if prof.calibration is not None:
            for var, src in prof.calibration.readings.items():
                for key, channel in _expand(prof, src):
                    self.sources[key] = ReadSource("reading", var, channel)
        chosen: dict[str, int] = {}
        for name in prof.telemetry:
            tsrc = prof.telemetry_source(name)
            inverse = _invert(tsrc.map)
            rank = 2 if tsrc.map is None else (1 if inverse is not None else 0)
            for key, channel in _expand(prof, tsrc.source):
                if rank > chosen.get(key, -1):
                    chosen[key] = rank
                    self.sources[key] = ReadSource("telemetry", name, channel, inverse)

    def _fallback(self, key: str) -> ReadSource:
        last = key.rsplit(".", 1)[-1]
        if last in SIM_IDENTITY:
            return ReadSource("identity", literal=SIM_IDENTITY[last])
        if last == "vendor":
            return ReadSource("identity", literal=self.profile.vendor)
        if last == "channels":
            channel = self.profile.parameters.get("channel")
            count = len(channel.allowed) if channel and channel.allowed else 1
            return ReadSource("identity", literal=count)
        return ReadSource("stored", key)


def _literals_match(step: Step, args: dict[str, Scalar]) -> bool:
    for name, want in step.args.items():
        if isinstance(want, str) and want.startswith("$"):
            continue
        if name not in args or not _same(args[name], want):
            return False
    return True


def _same(got: Scalar, want: Scalar) -> bool:
    if isinstance(want, str) or isinstance(got, str):
        return str(got).upper() == str(want).upper()
    return math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-9)


def _variables(writers: list[_Writer], args: dict[str, Scalar]) -> dict[str, Scalar]:
    out: dict[str, Scalar] = {}
    for w in writers:
        for name, ref in w.step.args.items():
            if isinstance(ref, str) and ref.startswith("$") and name in args:
                out[ref[1:]] = args[name]
    return out


def _switch_literals(writers: list[_Writer]) -> tuple[str, tuple[Scalar, Scalar]] | None:
    """An entry written with a literal by start and stop (or enter/leave calibration)."""
    for kind, on_op, off_op in (("output", "start", "stop"),
                                ("service", "enter_calibration", "leave_calibration")):
        on = [w for w in writers if w.op == on_op]
        off = [w for w in writers if w.op == off_op]
        if on and off and len(on[0].step.args) == 1 and len(off[0].step.args) == 1:
            on_v = next(iter(on[0].step.args.values()))
            off_v = next(iter(off[0].step.args.values()))
            if not (isinstance(on_v, str) and on_v.startswith("$")):
                return kind, (on_v, off_v)
    return None


def _keys_for(profile: Profile, entry: str, arg: str) -> list[str]:
    """Read result keys that show the value written to `entry`'s argument `arg`."""
    keys = profile.protocol.result_keys(entry)
    if entry in keys:          # Modbus: the register itself
        return [entry]
    return [k for k in (f"{entry}.{arg}",) if k in keys]


def _expand(profile: Profile, source: str) -> list[tuple[str, int | None]]:
    if "{channel}" not in source:
        return [(source, None)]
    channel = profile.parameters.get("channel")
    values = channel.allowed if channel and channel.allowed else [0]
    return [(source.replace("{channel}", str(int(v))), int(v)) for v in values]


def _invert(mapping: dict[str, Scalar] | None) -> dict[str, str] | None:
    if mapping is None:
        return None
    inverse: dict[str, str] = {}
    for raw, semantic in mapping.items():
        key = str(semantic)
        if key in inverse:
            return None
        inverse[key] = raw
    return inverse
