"""Device side of the framed binary family: SYNC LEN SEQ CMD PAYLOAD CRC_HI CRC_LO.

Generic over any FramedMap: command codes, field layouts, ranges, status codes
and event kinds all come from the profile. The frame scanner and payload codec
here are the simulator's own (only the CRC function is shared, and it is
checked against the catalogue value), so the controller's codec is tested
against an independent implementation.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from controller.profiles.model import Profile
from protocols.crc import crc16_ccitt_false
from protocols.map_common import Scalar
from protocols.map_framed import FrameCommand, FramedMap, FrameField
from simulator.binding import Binding, ReadSource
from simulator.model_base import ModelBase, RefusalKind, Refused, SimEvent

log = logging.getLogger(__name__)

# Bytes around LEN..PAYLOAD: SYNC, LEN itself, and the two CRC bytes.
FRAME_OVERHEAD = 4
BYTE_MASK = 0xFF
# A partial frame whose next byte comes this much later is abandoned, as a
# device's inter-byte timeout does: a whole 257-byte frame takes 22 ms at
# 115200 baud, and a host retries only after its reply timeout (100 ms for the
# ES-4), so a stale SYNC (or a bogus LEN) cannot swallow the retry.
FRAME_GAP_S = 0.05
STRUCT_CODES = {"u8": "B", "u16": "H", "i16": "h", "u32": "I"}
FIELD_RANGES = {"u8": (0, 0xFF), "u16": (0, 0xFFFF), "i16": (-0x8000, 0x7FFF),
                "u32": (0, 0xFFFFFFFF)}

# Why a request failed -> phrases that name it in a profile's status_codes, and
# the ES-4 code used when a profile's wording names none of them.
STATUS_REASONS: dict[str, tuple[tuple[str, ...], int]] = {
    "unknown_command": (("unknown command", "unknown"), 1),
    "bad_length": (("bad length", "length"), 2),
    "out_of_range": (("out of range", "range"), 3),
    "invalid_state": (("invalid state", "state"), 4),
    "lead_off": (("lead off", "lead"), 5),
    "interlock": (("interlock", "latched"), 6),
    "busy": (("busy",), 7),
}
REFUSAL_REASONS: dict[RefusalKind, str] = {
    "out_of_range": "out_of_range", "illegal_value": "out_of_range",
    "invalid_state": "invalid_state", "service_required": "invalid_state",
    "lead_off": "lead_off", "hardware_missing": "lead_off",
    "fault_latched": "interlock", "busy": "busy",
}


@runtime_checkable
class ReadHooks(Protocol):
    """Optional model hooks (the TENS model has them) for reads with side effects."""

    def prepare_read(self, ops: frozenset[str], values: dict[str, Scalar],
                     now: float) -> None:
        """Before rendering a read with arguments (MEASURE_OUTPUT drives the load)."""

    def telemetry_reported(self, names: set[str]) -> None:
        """After a reply showed these telemetry values (report-once flags clear)."""


@dataclass(frozen=True)
class RawFrame:
    seq: int
    cmd: int
    payload: bytes


def encode_frame(sync: int, seq: int, cmd: int, payload: bytes) -> bytes:
    body = bytes([2 + len(payload), seq & BYTE_MASK, cmd & BYTE_MASK]) + payload
    crc = crc16_ccitt_false(body)
    return bytes([sync]) + body + bytes([crc >> 8, crc & BYTE_MASK])


class FrameScanner:
    """Incremental: feed any chunking, get whole frames with a good LEN and CRC.

    Between calls it holds at most one incomplete candidate frame (at most
    max_len + 3 bytes): a bad LEN or CRC drops only the SYNC byte, so a real
    frame hidden behind a false SYNC is still found.
    """

    def __init__(self, sync: int, min_len: int, max_len: int) -> None:
        self.sync, self.min_len, self.max_len = sync, min_len, max_len
        self._buf = bytearray()
        self._last_rx: float | None = None
        self.dropped = 0
        """Candidate frames thrown away (bad LEN, bad CRC, stale)."""

    def feed(self, data: bytes, now: float) -> list[RawFrame]:
        if self._buf and self._last_rx is not None and now - self._last_rx > FRAME_GAP_S:
            self._buf.clear()
            self.dropped += 1
        self._last_rx = now
        buf = self._buf
        buf += data
        frames: list[RawFrame] = []
        while True:
            start = buf.find(self.sync)
            if start < 0:
                buf.clear()
                return frames
            del buf[:start]
            if len(buf) < 2:
                return frames
            length = buf[1]
            if not self.min_len <= length <= self.max_len:
                del buf[0]
                self.dropped += 1
                continue
            total = length + FRAME_OVERHEAD
            if len(buf) < total:
                return frames
            body = bytes(buf[1:2 + length])
            if crc16_ccitt_false(body) != (buf[2 + length] << 8 | buf[3 + length]):
                del buf[0]
                self.dropped += 1
                continue
            del buf[:total]
            frames.append(RawFrame(body[1], body[2], body[3:]))


class PayloadCodec:
    """Fields of one layout <-> bytes, in the map's byte order."""

    def __init__(self, order: str) -> None:
        self.prefix = "<" if order == "little" else ">"

    @staticmethod
    def size(fields: list[FrameField]) -> int:
        return sum(f.size for f in fields)

    def unpack(self, fields: list[FrameField], data: bytes) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {}
        pos = 0
        for f in fields:
            chunk = data[pos:pos + f.size]
            pos += f.size
            if f.type == "ascii":
                out[f.name] = chunk.rstrip(b"\0").decode("ascii", errors="replace")
            else:
                value: int = struct.unpack(self.prefix + STRUCT_CODES[f.type], chunk)[0]
                out[f.name] = value
        return out

    def pack(self, fields: list[FrameField], raw: dict[str, int | str]) -> bytes:
        out = bytearray()
        for f in fields:
            value = raw[f.name]
            if f.type == "ascii":
                length = f.length or 0
                out += str(value).encode("ascii", errors="replace")[:length].ljust(length, b"\0")
            else:
                lo, hi = FIELD_RANGES[f.type]
                number = value if isinstance(value, int) else _text_number(value)
                out += struct.pack(self.prefix + STRUCT_CODES[f.type], min(hi, max(lo, number)))
        return bytes(out)


class FramedEndpoint:
    """simulator.endpoint.Endpoint for any framed binary map."""

    def __init__(self, profile: Profile, model: ModelBase, binding: Binding) -> None:
        if not isinstance(profile.protocol, FramedMap):
            raise TypeError(f"profile {profile.id} is not a framed_binary device")
        self.profile = profile
        self.model = model
        self.binding = binding
        self.map: FramedMap = profile.protocol
        self.codec = PayloadCodec(self.map.payload_byte_order)
        self.scanner = FrameScanner(self.map.sync, self.map.min_len, self.map.max_len)
        self.commands = {c.code: (name, c) for name, c in self.map.commands.items()}
        self.status = _status_codes(self.map.status_codes)
        self.hooks = model if isinstance(model, ReadHooks) else None
        events = self.map.events
        self.event_codes = {k.name: code for code, k in events.kinds.items()} if events else {}
        # Duplicate suppression: endpoint state, kept across host connections.
        self.last_seq: int | None = None
        self.last_reply = b""
        self.executed = 0
        self.duplicates = 0
        self.stored: dict[str, Scalar] = {}
        """Raw values last written per `entry.field`, for reads nothing else binds."""

    # -- Endpoint -------------------------------------------------------------------
    def receive(self, data: bytes, now: float) -> list[bytes]:
        out: list[bytes] = []
        for frame in self.scanner.feed(data, now):
            if not self.map.seq_min <= frame.seq <= self.map.seq_max:
                log.debug("request SEQ %d outside %d..%d dropped", frame.seq,
                          self.map.seq_min, self.map.seq_max)
                continue
            # The state a request sees is the state at its arrival; events it
            # caused go out first, as whole frames of their own.
            out += self.tick(now)
            self.model.kick(now)
            if frame.seq == self.last_seq:
                self.duplicates += 1
                out.append(self.last_reply)
                continue
            self.executed += 1
            reply = self._execute(frame, now)
            self.last_seq, self.last_reply = frame.seq, reply
            out.append(reply)
        return out

    def tick(self, now: float) -> list[bytes]:
        return [frame for ev in self.model.tick(now) if (frame := self._event_frame(ev))]

    # -- requests ---------------------------------------------------------------------
    def _execute(self, frame: RawFrame, now: float) -> bytes:
        found = self.commands.get(frame.cmd)
        if found is None:
            return self._reply(frame, self.status["unknown_command"])
        name, cmd = found
        if len(frame.payload) != self.codec.size(cmd.request):
            return self._reply(frame, self.status["bad_length"])
        raw = self.codec.unpack(cmd.request, frame.payload)
        for f in cmd.request:
            if not f.raw_in_range(raw[f.name]):
                return self._reply(frame, self.status["out_of_range"])
        if cmd.needs_service and not self.model.service_mode:
            return self._reply(frame, self.status["invalid_state"])
        args = {f.name: _engineering(raw[f.name], f.scale) for f in cmd.request}
        try:
            payload = self._perform(name, cmd, args, raw, now)
        except Refused as exc:
            log.debug("%s refused: %s", name, exc)
            return self._reply(frame, self.status[REFUSAL_REASONS[exc.kind]])
        return self._reply(frame, self.map.ok_status, payload)

    def _perform(self, name: str, cmd: FrameCommand, args: dict[str, Scalar],
                 raw: dict[str, Scalar], now: float) -> bytes:
        channel: int | None = None
        if name in self.binding.writers or not (cmd.reply or name in self.binding.readers):
            meaning = self.binding.interpret_write(name, args)
            if meaning is None:
                raise Refused("illegal_value", f"no operation writes {name} with {args}")
            self.model.apply(meaning.action, meaning.values, now)
            self.stored.update({f"{name}.{k}": v for k, v in raw.items()})
        else:
            context = self.binding.read_context(name, args)
            if self.hooks is not None:
                self.hooks.prepare_read(context.ops, context.values, now)
            if "channel" in context.values:
                channel = int(context.values["channel"])
        return self._render(name, cmd, channel, now)

    def _render(self, name: str, cmd: FrameCommand, channel: int | None, now: float) -> bytes:
        shown: set[str] = set()
        raw: dict[str, int | str] = {}
        for f in cmd.reply:
            key = f"{name}.{f.name}"
            if f.bits:
                raw[f.name] = sum(1 << bit for bit_name, bit in f.bits.items()
                                  if _truthy(self._value(f"{key}.{bit_name}", channel, now,
                                                         shown)[0]))
            else:
                value, source = self._value(key, channel, now, shown)
                raw[f.name] = _to_raw(f, value, source)
        if shown and self.hooks is not None:
            self.hooks.telemetry_reported(shown)
        return self.codec.pack(cmd.reply, raw)

    def _value(self, key: str, channel: int | None, now: float,
               shown: set[str]) -> tuple[Scalar, ReadSource]:
        src = self.binding.source(key)
        ch = src.channel if src.channel is not None else channel
        value: Scalar
        if src.kind == "telemetry":
            value = self.model.telemetry(src.name, ch, now)
            shown.add(src.name)
        elif src.kind == "reading":
            value = self.model.reading(src.name, ch)
        elif src.kind == "variable":
            value = self.model.value(src.name, ch)
        elif src.kind == "switch" and src.on_off is not None:
            on = self.model.service_mode if src.name == "service" else self.model.output_on
            value = src.on_off[0] if on else src.on_off[1]
        elif src.literal is not None:
            value = src.literal
        else:
            value = self.stored.get(key, 0)
        return value, src

    def _reply(self, frame: RawFrame, status: int, payload: bytes = b"") -> bytes:
        code = (frame.cmd + self.map.reply_code_offset) & BYTE_MASK
        return encode_frame(self.map.sync, frame.seq, code, bytes([status]) + payload)

    # -- events -----------------------------------------------------------------------
    def _event_frame(self, event: SimEvent) -> bytes | None:
        spec = self.map.events
        code = self.event_codes.get(event.kind)
        if spec is None or code is None:
            log.debug("event %s has no frame in this map; not sent", event.kind)
            return None
        raw: dict[str, int | str] = {}
        for f in spec.payload:
            if f.name == spec.kind_field:
                raw[f.name] = code
            elif f.name == "channel":
                # "Not channel-specific" is the field's all-ones value (0xFF for a u8).
                raw[f.name] = (FIELD_RANGES.get(f.type, (0, BYTE_MASK))[1]
                               if event.channel is None else event.channel)
            elif f.name == "value":
                raw[f.name] = event.value
            else:
                raw[f.name] = 0
        return encode_frame(self.map.sync, spec.seq, spec.code, self.codec.pack(spec.payload, raw))


def _status_codes(texts: dict[int, str]) -> dict[str, int]:
    """Status code for each failure reason, found by the profile's own wording."""
    norm = {code: text.lower().replace("_", " ").replace("-", " ")
            for code, text in texts.items()}
    out: dict[str, int] = {}
    for reason, (phrases, default) in STATUS_REASONS.items():
        out[reason] = next((code for phrase in phrases for code, text in norm.items()
                            if phrase in text), default)
    return out


def _engineering(raw: Scalar, scale: float) -> Scalar:
    if isinstance(raw, str) or scale == 1.0:
        return raw
    # Rounded so 3 × 0.1 is 0.3, not 0.30000000000000004.
    return round(float(raw) * scale, 9)


def _to_raw(f: FrameField, value: Scalar, src: ReadSource) -> int | str:
    if f.type == "ascii":
        return str(value)
    if src.inverse is not None and str(value) in src.inverse:
        return _text_number(src.inverse[str(value)])
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return _text_number(value)
    return round(float(value) / f.scale)


def _text_number(text: str) -> int:
    """A raw value given as text ("2", "0x10"); identity text like "SIM0001" -> its digits."""
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        return round(float(text))
    except ValueError:
        digits = "".join(c for c in text if c.isdigit())
        return int(digits) if digits else 0


def _truthy(value: Scalar) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "off", "no")
    return bool(value)
