"""Run a profile's operations over a protocol engine: the controller's view of a device.

Owned by one worker (a session, a plan's pre-check, a calibration, a registration). It
knows operations, variables and telemetry names; the engine knows bytes; the modality
code knows what the values mean. `identify` is the one read-only look at a device that
every route takes before anything is written: who it is, whether a fault is latched,
and the facts the prescription's remaining limits need.
"""

from __future__ import annotations

import importlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from controller.modality.rules import FACT_ERA
from controller.profiles.model import Profile, device_identity
from controller.profiles.sections import Step
from controller.session import checks as session_checks
from protocols.engine import Engine, EventHandler
from protocols.errors import Interrupted, ProtocolError
from protocols.map_common import Scalar, scalar_text
from protocols.transport import SerialTransport

log = logging.getLogger(__name__)

ENGINES = {
    "modbus_rtu": "protocols.modbus:ModbusEngine",
    "scpi_line": "protocols.scpi:ScpiEngine",
    "framed_binary": "protocols.framed:FramedEngine",
}


@dataclass(frozen=True)
class ReadBack:
    """A value written to the device and what it reads back (None: cannot be read)."""

    written: Scalar
    read: Scalar | None

    @property
    def confirmed(self) -> bool | None:
        """True when the device holds the value, False when it holds another, None when
        it cannot tell."""
        return None if self.read is None else _equal(self.read, self.written)


# Device facts read at identification that limits may need (the ultrasound applicator's ERA).
FACT_TELEMETRY = (FACT_ERA,)


@dataclass(frozen=True)
class Identified:
    """What a device said about itself, read-only, before anything is written to it."""

    results: dict[str, Scalar]
    """The `identify` operation's results (its `expect` checked)."""
    telemetry: dict[str, Scalar]
    identity: dict[str, str]
    """model, serial, firmware as text ({} for a profile without an `identity` section)."""
    latched_fault: str
    """Why the device is not ready (a latched trip, an e-stop, output already on), or ""."""
    facts: dict[str, float]


def identify(link: DeviceLink, variables: Mapping[str, Scalar]) -> Identified:
    """Identify the device on `link`: ProtocolError (nothing written) when it does not answer
    as its profile's model; IdentityError when its identity fields cannot be read."""
    profile = link.profile
    results = link.run("identify", variables)
    telemetry = link.telemetry(variables)
    identity = device_identity(profile, results) if profile.identity is not None else {}
    facts = {name: float(value) for name in FACT_TELEMETRY
             if isinstance(value := telemetry.get(name), (int, float))
             and not isinstance(value, bool)}
    return Identified(results, telemetry, identity,
                      session_checks.latched_fault(profile, telemetry) or "", facts)


class OperationFailed(ProtocolError):
    """A device answered, but not as the operation expects (identity, confirmation)."""


class MissingVariable(ProtocolError):
    """An operation refers to a variable the session did not supply (a controller bug)."""


def open_engine(profile: Profile, port: str) -> Engine:
    """Open the port with the profile's link settings and the family's engine."""
    module, _, name = ENGINES[profile.protocol.family].partition(":")
    cls = getattr(importlib.import_module(module), name)
    transport = SerialTransport(port, profile.link.settings())
    try:
        engine: Engine = cls(transport, profile.protocol, profile.link.reply_timeout_s,
                             profile.safety.retry_budget)
    except Exception:
        transport.close()
        raise
    engine.device = f"the {profile.model}"   # its failures then name the model, not "device"
    return engine


class DeviceLink:
    def __init__(self, profile: Profile, engine: Engine) -> None:
        self.profile = profile
        self.engine = engine
        # Reply key per telemetry name and the values of the `{var}`s its source names
        # (a session reads one channel; a calibration visits several).
        self._telemetry_keys: dict[tuple[str, tuple[Scalar, ...]], str] = {}
        self._templates: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._interrupt: Callable[[], bool] | None = None

    @classmethod
    def open(cls, profile: Profile, port: str) -> DeviceLink:
        return cls(profile, open_engine(profile, port))

    def has(self, op: str) -> bool:
        return op in self.profile.operations.defined()

    def run(self, op: str, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
        """Run every step of an operation; results of all its reads, expectations checked."""
        steps = self.profile.operations.defined().get(op)
        if steps is None:
            raise OperationFailed(f"profile {self.profile.id} has no '{op}' operation")
        results: dict[str, Scalar] = {}
        for index, step in enumerate(steps):
            if index and self._interrupt is not None and self._interrupt():
                raise Interrupted(f"{op}: pre-empted before step {index + 1}")
            args = self._resolve(step, variables)
            if step.write is not None:
                results.update(self.engine.write(step.write, args))
            else:
                assert step.read is not None
                results.update(self.engine.read(step.read, args or None))
            self._check_expect(op, step, results)
        return results

    def read_back(self, op: str, variables: Mapping[str, Scalar]) -> dict[str, ReadBack]:
        """Read back every value that `op` writes where the device can tell (holding
        registers, settable queries): "arg" or "entry.arg" -> (written, read or None).

        The record keeps what the device holds, not what was planned; a value the
        family cannot read back without side effects reads as None."""
        out: dict[str, ReadBack] = {}
        for step in self.profile.operations.defined().get(op) or []:
            if step.write is None:
                continue
            written = self._resolve(step, variables)
            got: dict[str, Scalar] = {}
            if self.engine.reads_back(step.write):
                got = self.engine.read([step.write])
            for arg, value in written.items():
                key = f"{step.write}.{arg}"
                read = got.get(key, got.get(step.write) if len(written) == 1 else None)
                out[key] = ReadBack(value, read)
        return out

    def telemetry(self, variables: Mapping[str, Scalar],
                  partial: bool = False) -> dict[str, Scalar]:
        """Read telemetry and translate it to the modality's names. `partial`: leave out
        names the reply lacks (a calibration reading a channel in service mode) instead
        of failing."""
        raw = self.run("read_telemetry", variables)
        out: dict[str, Scalar] = {}
        for name in self.profile.telemetry:
            key = self._telemetry_key(name, variables)
            if partial and key not in raw:
                continue
            value = raw[key]
            mapping = self.profile.telemetry_source(name).map
            if mapping is not None:
                value = mapping.get(scalar_text(value), value)
            out[name] = value
        return out

    def _telemetry_key(self, name: str, variables: Mapping[str, Scalar]) -> str:
        template = self._templates.get(name)
        if template is None:
            source = self.profile.telemetry_source(name).source
            template = (source, tuple(re.findall(r"\{(\w+)\}", source)))
            self._templates[name] = template
        source, names = template
        values = tuple(variables[v] for v in names if v in variables)
        key = self._telemetry_keys.get((name, values))
        if key is None:
            key = self._telemetry_keys[(name, values)] = expand(source, variables)
        return key

    def set_event_handler(self, handler: EventHandler | None) -> None:
        self.engine.set_event_handler(handler)

    def set_interrupt(self, check: Callable[[], bool] | None) -> None:
        """Let `check` pre-empt routine I/O: before every exchange but the first of an
        operation, a true check raises `Interrupted` and nothing more is sent. A stop
        then waits for at most the one exchange already on the wire. Cleared (None)
        before stop commands, which must never be pre-empted."""
        self._interrupt = check
        self.engine.set_interrupt(check)

    def poll_events(self) -> None:
        self.engine.poll_events()

    def close(self) -> None:
        self.engine.close()

    def _resolve(self, step: Step, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
        args: dict[str, Scalar] = {}
        for name, value in step.args.items():
            if isinstance(value, str) and value.startswith("$"):
                var = value[1:]
                if var not in variables:
                    raise MissingVariable(f"operation needs '{value}' for argument '{name}'")
                args[name] = variables[var]
            else:
                args[name] = value
        return args

    def _check_expect(self, op: str, step: Step, results: dict[str, Scalar]) -> None:
        for key, want in step.expect.items():
            got = results.get(key)
            if not _equal(got, want):
                raise OperationFailed(f"{op}: the device reports {key} {_shown(got)}, "
                                      f"expected {_shown(want)}")


def expand(source: str, variables: Mapping[str, Scalar]) -> str:
    """A `{var}` template (telemetry sources, calibration readings) with the values in."""
    for name, value in variables.items():
        token = "{" + name + "}"
        if token in source:
            source = source.replace(token, scalar_text(value))
    return source



def _shown(value: Scalar | None) -> str:
    """A reply value in a message: text as it is, `nothing` for a missing one (no reprs)."""
    if value is None:
        return "nothing"
    return scalar_text(value) if not isinstance(value, str) else f"\"{value.strip()}\""


def _equal(got: Scalar | None, want: Scalar) -> bool:
    if got is None:
        return False
    if isinstance(want, str) or isinstance(got, str):
        return str(got).strip() == str(want).strip()
    return math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-9)
