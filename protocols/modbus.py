"""Modbus RTU engine: any ModbusMap driven over a Transport.

The bytes come from protocols.modbus_codec; this module owns the exchange:
write a request, frame the reply by its expected length, validate it, retry on
silence or garbage, and turn register words into engineering values. Nothing
here knows a particular device: names, addresses, scales and ranges all come
from the map.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from protocols.engine import DEFAULT_DEVICE, EventHandler, InterruptCheck, gave_up
from protocols.errors import (
    CorruptReply,
    DeviceRefused,
    Interrupted,
    LinkTimeout,
    ProtocolViolation,
    ValueRejected,
)
from protocols.map_common import Scalar
from protocols.map_modbus import ModbusMap, ModbusRegister
from protocols.modbus_codec import (
    FC_READ_HOLDING,
    FC_READ_INPUT,
    Request,
    encode_register,
    exact_divisor,
    parse_reply,
    read_frame,
    read_request,
    write_multiple_request,
    write_single_request,
)
from protocols.transport import Transport

log = logging.getLogger(__name__)

# After a garbled or unexpected reply, wait until the line has been quiet this
# long before retrying, so the tail of that frame is not taken for the next reply.
DRAIN_QUIET_S = 0.01
DRAIN_CHUNK = 256
# Read plans are cached per tuple of entry names; operations use a handful.
MAX_CACHED_PLANS = 256
MAX_CACHED_FLAG_WORDS = 64

_RETRYABLE = (LinkTimeout, CorruptReply, ProtocolViolation)
_TABLES = (("input", FC_READ_INPUT), ("holding", FC_READ_HOLDING))


@dataclass(frozen=True, slots=True)
class _Flags:
    """The named bits of one `bits` register of a read step."""

    index: int
    masks: tuple[tuple[str, int], ...]
    """(result key, bit mask)."""
    seen: dict[int, dict[str, bool]]
    """Decoded by raw value: a status word takes few values, so a poll reuses them."""

    def decode(self, raw: int) -> dict[str, bool]:
        decoded = self.seen.get(raw)
        if decoded is None:
            decoded = {key: raw & mask != 0 for key, mask in self.masks}
            if len(self.seen) >= MAX_CACHED_FLAG_WORDS:
                self.seen.clear()
            self.seen[raw] = decoded
        return decoded


@dataclass(frozen=True, slots=True)
class _ReadStep:
    """One read request and how its raw values become result entries.

    Precomputed once per entry list so a poll does little more than the I/O.
    """

    request: Request
    names: tuple[str, ...]
    divided: tuple[tuple[int, int], ...]
    """(index, 1/scale) for decimal scales: 371 / 10 gives 37.1 exactly."""
    multiplied: tuple[tuple[int, float], ...]
    """(index, scale) for other scales."""
    flags: tuple[_Flags, ...]


def _read_step(unit: int, function: int, run: list[tuple[int, str, ModbusRegister]]) -> _ReadStep:
    names = tuple(name for _, name, _ in run)
    request = read_request(unit, function, run[0][0], len(run), ",".join(names),
                           [reg.type == "int16" for _, _, reg in run])
    divided: list[tuple[int, int]] = []
    multiplied: list[tuple[int, float]] = []
    flags: list[_Flags] = []
    for index, (_, name, reg) in enumerate(run):
        if reg.scale != 1:
            divisor = exact_divisor(reg.scale)
            if divisor is None:
                multiplied.append((index, reg.scale))
            else:
                divided.append((index, divisor))
        if reg.bits:
            flags.append(_Flags(index, tuple((f"{name}.{bit_name}", 1 << bit)
                                             for bit_name, bit in reg.bits.items()), {}))
    return _ReadStep(request, names, tuple(divided), tuple(multiplied), tuple(flags))


class ModbusEngine:
    """protocols.engine.Engine for the modbus_rtu family. Owned by one thread."""

    device = DEFAULT_DEVICE

    def __init__(self, transport: Transport, pmap: ModbusMap, reply_timeout_s: float,
                 retries: int) -> None:
        if reply_timeout_s <= 0:
            raise ValueError(f"reply_timeout_s must be positive, not {reply_timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        self._transport = transport
        self._map = pmap
        self._timeout = reply_timeout_s
        self._attempts = 1 + retries
        self._exception_texts = dict(pmap.exception_codes)
        self._plans: dict[tuple[str, ...], tuple[_ReadStep, ...]] = {}
        # Set when an attempt got no valid reply: a late one may still come.
        self._stale = False
        # One select and one read per reply where the transport offers it.
        self._read_some: Callable[[int, float], bytes] | None = \
            getattr(transport, "read_some", None)
        self._interrupt: InterruptCheck | None = None
        self._armed = False   # the interrupt check applies to the next exchange

    # --- Engine interface ---------------------------------------------------

    def read(self, entries: Sequence[str],
             args: Mapping[str, Scalar] | None = None) -> dict[str, Scalar]:
        """Registers by name; `name` -> engineering value, `name.bit` -> bool."""
        if args:
            raise ValueRejected(f"Modbus register reads take no arguments, got {sorted(args)}")
        self._armed = False
        key = tuple(entries)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan_read(key)
            if len(self._plans) < MAX_CACHED_PLANS:
                self._plans[key] = plan
        result: dict[str, Scalar] = {}
        for step in plan:
            raws = self._exchange(step.request)
            if step.divided or step.multiplied:
                values: list[int | float] = list(raws)
                for index, divisor in step.divided:
                    values[index] = raws[index] / divisor
                for index, scale in step.multiplied:
                    values[index] = raws[index] * scale
                result.update(zip(step.names, values, strict=True))
            else:
                result.update(zip(step.names, raws, strict=True))
            for flags in step.flags:
                raw = raws[flags.index]
                result.update(flags.seen.get(raw) or flags.decode(raw))
        return result

    def write(self, entry: str, args: Mapping[str, Scalar]) -> dict[str, Scalar]:
        """One holding register with 0x06; args is {"value": engineering value}."""
        if set(args) != {"value"}:
            raise ValueRejected(f"{entry}: a register write takes exactly 'value', "
                                f"got {sorted(args)}")
        reg = self._holding(entry)
        word = encode_register(entry, reg, args["value"])
        self._armed = False
        self._exchange(write_single_request(self._map.unit_address, reg.address, word, entry))
        return {}

    def write_many(self, values: Mapping[str, Scalar]) -> None:
        """Consecutive holding registers in one 0x10 request: the device takes all or none.

        Every value is checked before anything is sent; the registers must form
        one contiguous run no longer than the map's per-request limit.
        """
        if not values:
            raise ValueRejected("write_many needs at least one register")
        encoded = sorted(
            (reg.address, name, encode_register(name, reg, value))
            for name, value in values.items()
            for reg in (self._holding(name),)
        )
        label = ",".join(name for _, name, _ in encoded)
        first = encoded[0][0]
        if [a for a, _, _ in encoded] != list(range(first, first + len(encoded))):
            raise ValueRejected(f"{label}: write_many needs consecutive register addresses")
        if len(encoded) > self._map.max_registers_per_request:
            raise ValueRejected(f"{label}: {len(encoded)} registers exceed the device's "
                                f"{self._map.max_registers_per_request} per request")
        words = [word for _, _, word in encoded]
        self._armed = False
        self._exchange(write_multiple_request(self._map.unit_address, first, words, label))

    def poll_events(self) -> None:
        """Modbus slaves never speak unasked: nothing to deliver."""

    def set_event_handler(self, handler: EventHandler | None) -> None:
        """Accepted for the Engine interface; no events ever arrive."""

    def set_interrupt(self, check: InterruptCheck | None) -> None:
        """See protocols.engine.Engine.set_interrupt."""
        self._interrupt = check

    def reads_back(self, entry: str) -> bool:
        """Holding registers read back (0x03) what was written to them."""
        return entry in self._map.holding_registers

    def close(self) -> None:
        self._transport.close()

    # --- internals ----------------------------------------------------------

    def _holding(self, name: str) -> ModbusRegister:
        reg = self._map.holding_registers.get(name)
        if reg is None:
            kind = "an input register" if name in self._map.input_registers else "not in the map"
            raise ValueRejected(f"{name}: cannot write, it is {kind}")
        return reg

    def _plan_read(self, entries: tuple[str, ...]) -> tuple[_ReadStep, ...]:
        """Group the requested registers into contiguous runs per table, split at the limit."""
        wanted: dict[str, dict[int, tuple[str, ModbusRegister]]] = {"input": {}, "holding": {}}
        for name in entries:
            found = self._map.register(name)
            if found is None:
                raise ValueRejected(f"{name}: not a register of this device's map")
            table, reg = found
            wanted[table][reg.address] = (name, reg)
        limit = self._map.max_registers_per_request
        steps: list[_ReadStep] = []
        for table, function in _TABLES:
            runs: list[list[tuple[int, str, ModbusRegister]]] = []
            for address in sorted(wanted[table]):
                name, reg = wanted[table][address]
                if runs and address == runs[-1][-1][0] + 1 and len(runs[-1]) < limit:
                    runs[-1].append((address, name, reg))
                else:
                    runs.append([(address, name, reg)])
            steps.extend(_read_step(self._map.unit_address, function, run) for run in runs)
        return tuple(steps)

    def _exchange(self, request: Request) -> tuple[int, ...]:
        """Send one request and return its validated reply's words, retrying as allowed.

        LinkLost and DeviceRefused propagate at once; silence, corrupt and
        unexpected replies are retried, and the last of them is raised. Every
        attempt but the first exchange of a read()/write() call gives way to a
        stop request (Interrupted) before it sends.
        """
        transport, check = self._transport, self._interrupt
        read, read_some = transport.read, self._read_some
        if self._stale:
            transport.discard_input()
            self._stale = False
        last: LinkTimeout | CorruptReply | ProtocolViolation | None = None
        for attempt in range(self._attempts):
            if check is not None and (attempt or self._armed) and check():
                # A reply to an earlier attempt may still come: _stale makes the
                # next exchange drop it first.
                after = None if last is None else type(last)(gave_up(
                    last, self.device, transport.port_name, attempt, self._timeout,
                    request.label))
                raise Interrupted(f"modbus {request.label}: a stop request came first; "
                                  "not sent", after=after)
            self._armed = True
            started = time.monotonic()
            frame = b""
            try:
                transport.write(request.adu)
                frame = read_frame(request, read, time.monotonic() + self._timeout, read_some)
                words = parse_reply(request, frame, self._exception_texts)
            except DeviceRefused:
                if log.isEnabledFor(logging.DEBUG):
                    self._log(request, frame, started)
                raise
            except _RETRYABLE as exc:
                last = exc
                # A late reply to this attempt may still come, even after a later
                # attempt succeeds: the next exchange drops it rather than take it as its own.
                self._stale = True
                # Retries are routine on a serial line: the detail (bytes, CRC) is for
                # the DEBUG log; only the final failure is the caller's to tell.
                log.debug("modbus %s: attempt %d of %d failed: %s", request.label,
                          attempt + 1, self._attempts, exc)
                if not isinstance(exc, LinkTimeout):
                    self._drain()
                transport.discard_input()
                continue
            if log.isEnabledFor(logging.DEBUG):
                self._log(request, frame, started)
            return words
        assert last is not None  # at least one attempt was made
        log.debug("modbus %s: giving up after %d attempts; last: %s", request.label,
                  self._attempts, last)
        raise type(last)(gave_up(last, self.device, transport.port_name, self._attempts,
                                 self._timeout, request.label)) from last

    def _drain(self) -> None:
        """Read until the line is quiet: the rest of a bad frame must not start the next reply."""
        end = time.monotonic() + self._timeout
        while (now := time.monotonic()) < end:
            if not self._transport.read(DRAIN_CHUNK, min(end, now + DRAIN_QUIET_S)):
                return

    @staticmethod
    def _log(request: Request, reply: bytes, started: float) -> None:
        log.debug("modbus %s: %s -> %s in %.3f ms", request.label, request.adu.hex(" "),
                  reply.hex(" ") or "(none)", (time.monotonic() - started) * 1e3)
