"""The device side of Modbus RTU, generic over any profile's register map.

Bytes in, reply frames out. Requests are framed by function code and length
(a pty has no inter-character silence to frame by); bytes that do not start a
frame with a correct CRC are dropped, so the decoder resynchronises on the next
good request. What a write means and where a read value comes from is the
binding's business (derived from the profile alone); semantics are the
model's. Nothing here names an HC-200 register.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from controller.profiles.model import Profile
from protocols.crc import crc16_modbus, crc16_modbus_states
from protocols.map_common import Scalar
from protocols.map_modbus import ModbusMap, ModbusRegister
from simulator.binding import SET, Binding, ReadSource
from simulator.model_base import ModelBase, Refused

log = logging.getLogger(__name__)

READ_HOLDING = 0x03
READ_INPUT = 0x04
WRITE_SINGLE = 0x06
WRITE_MULTIPLE = 0x10
EXCEPTION_FLAG = 0x80
ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03
DEVICE_FAILURE = 0x04

CRC_LEN = 2
MIN_FRAME = 4                 # address, function, CRC: the shortest Modbus request
MAX_ADU = 256                 # Modbus RTU frame limit
# Request lengths by function code, so that requests for functions this device
# does not implement are framed too and answered with exception 0x01.
FIXED_LENGTHS = {0x01: 8, 0x02: 8, 0x03: 8, 0x04: 8, 0x05: 8, 0x06: 8, 0x07: 4, 0x08: 8,
                 0x0B: 4, 0x0C: 4, 0x11: 4, 0x16: 10, 0x18: 6, 0x2B: 7}
# Function code -> (index of the byte count, header bytes before the data).
COUNTED_LENGTHS = {0x0F: (6, 7), 0x10: (6, 7), 0x14: (2, 3), 0x15: (2, 3), 0x17: (10, 11)}
# Vendor/unknown functions: frame by the first matching CRC within this length
# (bounded: every offset of a garbage buffer is tried).
UNKNOWN_SCAN_MAX = 32
# Keep at most this much undecodable input: more than any request plus garbage.
MAX_BUFFER = 2 * MAX_ADU
# A partial request older than this is a broken frame (RTU ends frames on
# 3.5 characters of silence; hosts write a request in one go).
STALE_PARTIAL_S = 0.5
_VERSION = re.compile(r"^(\d+)\.(\d+)$")
# Model attributes shared with the outside (not part of a write's rollback).
_NOT_SNAPSHOT = frozenset({"profile", "faults", "clock", "lock"})


@runtime_checkable
class RawEntryHooks(Protocol):
    """Optional model hooks for map entries no operation uses (HC-200 trip thresholds)."""

    def set_raw_entry(self, entry: str, value: Scalar) -> bool:
        """Take an engineering value written to `entry`; False when the model has no use
        for it (the endpoint then just stores the raw value). May raise Refused."""
        ...

    def raw_entry_value(self, entry: str) -> Scalar | None:
        """The engineering value `entry` reads as, or None for the stored raw value."""
        ...


class ModbusException(Exception):
    def __init__(self, code: int, text: str) -> None:
        self.code = code
        super().__init__(f"exception {code:#04x}: {text}")


@dataclass(frozen=True)
class _Write:
    name: str
    raw: int
    """Signed for int16 registers."""
    value: Scalar
    """Engineering value (raw × scale)."""
    action: str
    values: dict[str, Scalar]


class ModbusEndpoint:
    """A Modbus RTU slave for any profile's map, answering for `model`."""

    def __init__(self, profile: Profile, model: ModelBase, binding: Binding) -> None:
        pmap = profile.protocol
        if not isinstance(pmap, ModbusMap):
            raise TypeError(f"profile {profile.id} is not a Modbus RTU device")
        self.model = model
        self.binding = binding
        self.unit = pmap.unit_address
        self.max_registers = pmap.max_registers_per_request
        self.tables: dict[int, dict[int, tuple[str, ModbusRegister]]] = {
            READ_HOLDING: {r.address: (n, r) for n, r in pmap.holding_registers.items()},
            READ_INPUT: {r.address: (n, r) for n, r in pmap.input_registers.items()},
        }
        self.hooks = model if isinstance(model, RawEntryHooks) else None
        self.stored: dict[str, int] = {}
        """Last raw value written to entries no model hook claims (default 0)."""
        self.discarded_bytes = 0
        self.ignored_frames = 0
        """Good frames addressed to another unit or broadcast."""
        self._rx = _RequestScanner()
        self._last_rx = 0.0

    # -- Endpoint protocol ----------------------------------------------------------
    def receive(self, data: bytes, now: float) -> list[bytes]:
        self.model.tick(now)                 # state is current before any request acts
        self._rx.append(data)
        self._last_rx = now
        replies: list[bytes] = []
        while (found := self._rx.next_frame()) is not None:
            skipped, frame = found
            self.discarded_bytes += skipped
            reply = self._handle(frame, now)
            if reply is not None:
                replies.append(reply)
        self.discarded_bytes += self._rx.keep_last(MAX_BUFFER)
        return replies

    def tick(self, now: float) -> list[bytes]:
        self.model.tick(now)
        if self._rx.buf and now - self._last_rx > STALE_PARTIAL_S:
            self.discarded_bytes += self._rx.keep_last(0)
        return []                            # a Modbus slave never speaks unasked

    # -- one request ---------------------------------------------------------------------
    def _handle(self, frame: bytes, now: float) -> bytes | None:
        if frame[0] != self.unit:            # another unit, or broadcast 0: ignored
            self.ignored_frames += 1
            return None
        self.model.kick(now)
        function, data = frame[1], frame[2:-CRC_LEN]
        try:
            pdu = self._execute(function, data, now)
        except ModbusException as exc:
            log.debug("unit %d: %s", self.unit, exc)
            pdu = bytes([function | EXCEPTION_FLAG, exc.code])
        return _with_crc(bytes([self.unit]) + pdu)

    def _execute(self, function: int, data: bytes, now: float) -> bytes:
        if function in (READ_HOLDING, READ_INPUT):
            start, count = _u16(data, 0), _u16(data, 2)
            self._check_count(count)
            regs = self._registers(READ_HOLDING if function == READ_HOLDING else READ_INPUT,
                                   start, count)
            words = [self._render(name, reg, now) for name, reg in regs]
            return bytes([function, 2 * count]) + b"".join(w.to_bytes(2, "big") for w in words)
        if function == WRITE_SINGLE:
            start = _u16(data, 0)
            self._write(self._registers(READ_HOLDING, start, 1), [_u16(data, 2)], now)
            return bytes([function]) + data
        if function == WRITE_MULTIPLE:
            start, count, nbytes = _u16(data, 0), _u16(data, 2), data[4]
            self._check_count(count)
            if nbytes != 2 * count:
                raise ModbusException(ILLEGAL_VALUE, f"byte count {nbytes} for {count} registers")
            words = [_u16(data, 5 + 2 * i) for i in range(count)]
            self._write(self._registers(READ_HOLDING, start, count), words, now)
            return bytes([function]) + data[:4]
        raise ModbusException(ILLEGAL_FUNCTION, f"function {function:#04x} not supported")

    def _check_count(self, count: int) -> None:
        if not 1 <= count <= self.max_registers:
            raise ModbusException(ILLEGAL_VALUE, f"{count} registers (1..{self.max_registers})")

    def _registers(self, table: int, start: int, count: int) -> list[tuple[str, ModbusRegister]]:
        regs = self.tables[table]
        missing = [a for a in range(start, start + count) if a not in regs]
        if missing:
            raise ModbusException(ILLEGAL_ADDRESS, f"no register at {missing[0]}")
        return [regs[a] for a in range(start, start + count)]

    # -- writes ----------------------------------------------------------------------------
    def _write(self, regs: list[tuple[str, ModbusRegister]], words: list[int],
               now: float) -> None:
        """Check every value, then apply all of them or (on a refusal) none."""
        plan = [self._plan(name, reg, word) for (name, reg), word in zip(regs, words, strict=True)]
        snapshot = _snapshot(self.model) if len(plan) > 1 else None
        staged: dict[str, int] = {}
        try:
            for w in plan:
                self.model.apply(w.action, w.values, now)
                if w.action == SET and not w.values and not (
                        self.hooks is not None and self.hooks.set_raw_entry(w.name, w.value)):
                    staged[w.name] = w.raw
        except Refused as exc:
            _restore(self.model, snapshot)
            raise ModbusException(ILLEGAL_VALUE, str(exc)) from None
        except Exception as exc:
            log.exception("unit %d: model failed on a write", self.unit)
            _restore(self.model, snapshot)
            raise ModbusException(DEVICE_FAILURE, str(exc)) from None
        # Control writes (start, fault reset...) are commands, not settings: they
        # are not stored, so such a register reads 0 ("fault_reset reads 0").
        self.stored.update(staged)

    def _plan(self, name: str, reg: ModbusRegister, word: int) -> _Write:
        raw = _signed(word) if reg.type == "int16" else word
        if not reg.raw_in_range(raw):
            raise ModbusException(ILLEGAL_VALUE, f"{name}={raw}: accepts {reg.describe_range()}")
        if reg.calibration_only and not self.model.service_mode:
            raise ModbusException(ILLEGAL_VALUE, f"{name} is written only in calibration mode")
        value: Scalar = raw if reg.scale == 1 else raw * reg.scale
        meaning = self.binding.interpret_write(name, {"value": value})
        if meaning is None:
            raise ModbusException(ILLEGAL_VALUE, f"{name}={raw} means nothing to this device")
        return _Write(name, raw, value, meaning.action, meaning.values)

    # -- reads ------------------------------------------------------------------------------
    def _render(self, name: str, reg: ModbusRegister, now: float) -> int:
        """The 16-bit wire value of one register."""
        try:
            word = self._word(name, reg, now)
            if reg.bits:
                word = self._overlay_bits(name, reg, word, now)
            return word
        except (KeyError, ValueError, TypeError, OverflowError) as exc:
            log.exception("unit %d: cannot render register %s", self.unit, name)
            raise ModbusException(DEVICE_FAILURE, f"{name}: {exc!r}") from None

    def _word(self, name: str, reg: ModbusRegister, now: float) -> int:
        src = self.binding.source(name)
        if src.kind == "stored":
            held = self.hooks.raw_entry_value(name) if self.hooks is not None else None
            if held is None:
                return self.stored.get(name, 0) & 0xFFFF
            return _to_word(held, reg)
        value = self._value(src, now)
        if isinstance(value, str):
            value = _text_number(value, version=src.kind == "identity")
        return _to_word(value, reg)

    def _overlay_bits(self, name: str, reg: ModbusRegister, word: int, now: float) -> int:
        """Bits registers: each named bit from its own source (`status.output_enabled`)."""
        for bit_name, bit in (reg.bits or {}).items():
            src = self.binding.source(f"{name}.{bit_name}")
            if src.kind == "stored":
                continue                     # unbound bit: as stored (0 by default)
            if _truthy(self._value(src, now)):
                word |= 1 << bit
            else:
                word &= ~(1 << bit)
        return word

    def _value(self, src: ReadSource, now: float) -> Scalar:
        """The engineering value (or raw text) a read source shows right now."""
        model = self.model
        if src.kind == "telemetry":
            value = model.telemetry(src.name, src.channel, now)
            if src.inverse is not None:
                return _raw_text(src.inverse, value)
            return value
        if src.kind == "reading":
            return model.reading(src.name, src.channel)
        if src.kind == "variable":
            return model.value(src.name, src.channel)
        if src.kind == "switch" and src.on_off is not None:
            on = model.output_on if src.name == "output" else model.service_mode
            return src.on_off[0] if on else src.on_off[1]
        if src.kind in ("expect", "identity") and src.literal is not None:
            return src.literal
        raise KeyError(f"no value for read source {src}")


# -- framing ---------------------------------------------------------------------------------
class _RequestScanner:
    """Finds requests in the input: the first start offset whose complete request checks.

    Bytes only join at the end, so each start is examined once (rescanning the whole
    buffer per read was quadratic in garbage): a running CRC per candidate, checked at
    the stops its function allows, until a request ends there or no stop is left.
    Offsets count from the start of the stream, so dropping bytes moves no state.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self._base = 0                          # stream offset of buf[0]
        self._checked = 0                       # starts below this are candidates or ruled out
        self._live: dict[int, tuple[int, int]] = {}  # candidate -> CRC of buf[start:to], to

    def append(self, data: bytes) -> None:
        self.buf += data
        end = self._base + len(self.buf)
        for start in range(self._checked, end - 1):   # its function code is in
            self._live[start] = (0xFFFF, start)
        self._checked = max(self._checked, end - 1)

    def next_frame(self) -> tuple[int, bytes] | None:
        """(bytes skipped, request) for the first request in the input, taken out of it."""
        for start, (crc, to) in list(self._live.items()):   # in start order
            if length := self._extend(start, crc, to):
                skipped = start - self._base
                frame = bytes(self.buf[skipped:skipped + length])
                self.keep_last(len(self.buf) - skipped - length)
                return skipped, frame
        return None

    def keep_last(self, limit: int) -> int:
        """Drop the oldest bytes beyond `limit`; how many were dropped."""
        excess = max(0, len(self.buf) - limit)
        if excess:
            del self.buf[:excess]
            self._base += excess
            self._checked = max(self._checked, self._base)
            self._live = {s: v for s, v in self._live.items() if s >= self._base}
        return excess

    def _extend(self, start: int, crc: int, to: int) -> int | None:
        """Extend the running CRC of candidate `start` over new input: the length of the
        request it begins once complete, else None. The CRC over a body and its CRC is 0,
        so a function of unknown length ends at the first such stop it may end at."""
        i, buf = start - self._base, self.buf
        shortest, longest = MIN_FRAME, UNKNOWN_SCAN_MAX
        if buf[i + 1] in FIXED_LENGTHS:
            shortest = longest = FIXED_LENGTHS[buf[i + 1]]
        elif buf[i + 1] in COUNTED_LENGTHS:
            index, header = COUNTED_LENGTHS[buf[i + 1]]
            if i + index >= len(buf):
                return None                     # byte count not in yet
            shortest = longest = header + buf[i + index] + CRC_LEN
        upto = min(len(buf), i + longest)
        states = _crc_states(buf[to - self._base:upto], crc)
        skip = max(0, start + shortest - to - 1)   # states[k]: the CRC at stop to + k + 1
        if 0 in states[skip:]:
            del self._live[start]
            return to + 1 + states.index(0, skip) - start
        if upto == i + longest:
            del self._live[start]               # every stop tried: no request here
        elif states:
            self._live[start] = (states[-1], self._base + upto)
        return None


# The running CRC of a candidate request; a module name so the tests can count its work.
_crc_states = crc16_modbus_states


def _with_crc(body: bytes) -> bytes:
    return body + crc16_modbus(body).to_bytes(2, "little")


# -- value conversion ---------------------------------------------------------------------------
def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset:offset + 2], "big")


def _signed(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


def _to_word(value: Scalar, reg: ModbusRegister) -> int:
    """Engineering value -> wire word: divide by the scale, round, clamp to the type."""
    if isinstance(value, str):
        raise ValueError(f"text {value!r} in a numeric register")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{number} cannot be sent")
    raw = round(number / reg.scale)
    low, high = (-0x8000, 0x7FFF) if reg.type == "int16" else (0, 0xFFFF)
    return max(low, min(high, raw)) & 0xFFFF


def _text_number(text: str, version: bool) -> int:
    """Numeric text (`0x4843`, `12`) as a number; an identity version `1.02` as 102."""
    match = _VERSION.match(text.strip())
    if version and match:
        return int(match.group(1)) * 100 + int(match.group(2))
    return int(text.strip(), 0)


def _raw_text(inverse: dict[str, str], value: Scalar) -> Scalar:
    """Mapped telemetry: the raw text whose meaning is `value`."""
    for semantic, raw in inverse.items():
        if _same(semantic, value):
            return raw
    raise KeyError(f"telemetry value {value!r} has no raw form (map: {inverse})")


def _same(text: str, value: Scalar) -> bool:
    if str(value).lower() == text.lower():
        return True
    try:
        return float(text) == float(value)
    except ValueError:
        return False


def _truthy(value: Scalar) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "off", "no")
    return bool(value)


# -- all-or-nothing writes ------------------------------------------------------------------------
def _snapshot(model: ModelBase) -> dict[str, object]:
    return {k: copy.deepcopy(v) for k, v in vars(model).items() if k not in _NOT_SNAPSHOT}


def _restore(model: ModelBase, snapshot: dict[str, object] | None) -> None:
    if snapshot is None:
        return
    for key, saved in snapshot.items():
        current = getattr(model, key)
        if isinstance(current, list) and isinstance(saved, list):
            current[:] = saved               # keep the object: callers may hold it
        elif isinstance(current, dict) and isinstance(saved, dict):
            current.clear()
            current.update(saved)
        else:
            setattr(model, key, saved)
