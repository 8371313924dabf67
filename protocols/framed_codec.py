"""Pure codec of the framed binary family: `SYNC LEN SEQ CMD PAYLOAD CRC_HI CRC_LO`.

LEN counts SEQ, CMD and PAYLOAD; the CRC (CRC-16/CCITT-FALSE) covers LEN, SEQ,
CMD and PAYLOAD and is sent high byte first. Payload fields are laid out by a
map's field list. No I/O here: the engine (protocols.framed) owns the port.
"""

from __future__ import annotations

import struct
from binascii import crc_hqx
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from protocols.errors import ValueRejected
from protocols.map_common import Scalar
from protocols.map_framed import FrameField

# Bytes around the LEN-counted part: SYNC, LEN before it; CRC_HI, CRC_LO after.
FRAME_OVERHEAD = 4
# LEN counts SEQ and CMD besides the payload.
SEQ_CMD_LEN = 2
BYTE_MASK = 0xFF
# binascii.crc_hqx is the MSB-first CRC-16 with polynomial 0x1021 from a given
# start value: started at 0xFFFF it is CRC-16/CCITT-FALSE (protocols.crc's
# crc16_ccitt_false, tests check they agree), done in C: ~20x faster here.
CRC_INIT = 0xFFFF

_STRUCT_CODES = {"u8": "B", "u16": "H", "i16": "h", "u32": "I"}
_RAW_LIMITS = {"u8": (0, 0xFF), "u16": (0, 0xFFFF), "i16": (-0x8000, 0x7FFF),
               "u32": (0, 0xFFFF_FFFF)}
# An engineering value is representable when value/scale is this close to an
# integer (relative): absorbs float noise (0.3 / 0.1), refuses real rounding.
REPRESENTABLE_SLACK = 1e-6
# A scale whose inverse is this close to an integer is applied by division
# (123 / 10 == 12.3, where 123 * 0.1 == 12.300000000000001).
INVERSE_SLACK = 1e-9


class Frame(NamedTuple):
    """One CRC-valid frame (a NamedTuple: built on the hot path, cheaper than a dataclass)."""

    seq: int
    cmd: int
    payload: bytes


def encode_frame(sync: int, seq: int, cmd: int, payload: bytes = b"") -> bytes:
    """One complete frame, ready for the wire."""
    body = bytes((SEQ_CMD_LEN + len(payload), seq, cmd)) + payload
    crc = crc_hqx(body, CRC_INIT)
    return bytes((sync,)) + body + bytes((crc >> 8, crc & BYTE_MASK))


def frame_size(payload_len: int) -> int:
    """Bytes on the wire of a frame carrying `payload_len` payload bytes."""
    return FRAME_OVERHEAD + SEQ_CMD_LEN + payload_len


# -- values ---------------------------------------------------------------------

def _inverse_scale(scale: float) -> int | None:
    inv = 1.0 / scale
    n = round(inv)
    return n if n >= 1 and abs(inv - n) <= INVERSE_SLACK * inv else None


def to_engineering(field: FrameField, raw: int | bytes) -> Scalar:
    """Engineering value of one raw field value (ascii: text without NUL padding)."""
    if isinstance(raw, bytes):
        # A device that breaks the ascii promise should not crash the host.
        return raw.rstrip(b"\0").decode("ascii", errors="replace")
    if field.scale == 1.0:
        return raw
    inv = _inverse_scale(field.scale)
    return raw / inv if inv is not None else raw * field.scale


def _describe(field: FrameField) -> str:
    text = f"accepted raw values {field.describe_range()}"
    if field.scale != 1.0 or field.unit:
        text += f" (engineering = raw × {field.scale:g}{' ' + field.unit if field.unit else ''})"
    lo, hi = _RAW_LIMITS.get(field.type, (None, None))
    if lo is not None:
        text += f", {field.type} holds {lo}..{hi}"
    return text


def to_raw(field: FrameField, value: Scalar, where: str) -> int | bytes:
    """Raw wire value of an engineering value; ValueRejected (never clipped) if it has none."""
    prefix = f"{where}: field '{field.name}' = {value!r}"
    if field.type == "ascii":
        if not isinstance(value, str):
            raise ValueRejected(f"{prefix}: text expected")
        try:
            data = value.encode("ascii")
        except UnicodeEncodeError:
            raise ValueRejected(f"{prefix}: not ASCII") from None
        if len(data) > (field.length or 0):
            raise ValueRejected(f"{prefix}: longer than {field.length} bytes")
        if not field.raw_in_range(value):
            raise ValueRejected(f"{prefix}: not accepted; {_describe(field)}")
        return data
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueRejected(f"{prefix}: a number is expected")
    inv = _inverse_scale(field.scale)
    try:
        exact = value * inv if inv is not None else value / field.scale
        raw = round(exact)  # OverflowError for inf, ValueError for NaN
        off_step = abs(exact - raw) > REPRESENTABLE_SLACK * max(1.0, abs(exact))
    except (OverflowError, ValueError):
        raise ValueRejected(f"{prefix}: not a finite number in range") from None
    if off_step:
        raise ValueRejected(f"{prefix}: not a whole number of steps of {field.scale:g}"
                            f"{' ' + field.unit if field.unit else ''}; {_describe(field)}")
    lo, hi = _RAW_LIMITS[field.type]
    if not field.raw_in_range(raw) or not lo <= raw <= hi:
        raise ValueRejected(f"{prefix} (raw {raw}) is not accepted; {_describe(field)}")
    return raw


# -- payload layouts --------------------------------------------------------------

class PayloadLayout:
    """A fixed sequence of fields, compiled once into a struct format and decode plan."""

    def __init__(self, fields: Sequence[FrameField], byte_order: str, *,
                 lead: str = "", prefix: str = "") -> None:
        """`lead`: struct codes of bytes before the fields (a reply's status byte);
        `prefix`: put before every result key (`entry.`)."""
        self.fields = tuple(fields)
        order = "<" if byte_order == "little" else ">"
        codes = "".join(f"{f.length}s" if f.type == "ascii" else _STRUCT_CODES[f.type]
                        for f in self.fields)
        self._struct = struct.Struct(order + lead + codes)
        self._lead = len(lead)
        self.size = self._struct.size
        self.names = frozenset(f.name for f in self.fields)
        # Decoding is on the hot path: keys and conversions are worked out here once.
        self._keys = tuple(prefix + f.name for f in self.fields)
        self._scaled = tuple((i, self._keys[i], _inverse_scale(f.scale), f.scale)
                             for i, f in enumerate(self.fields)
                             if f.scale != 1.0 and f.type != "ascii")
        self._texts = tuple((i, self._keys[i]) for i, f in enumerate(self.fields)
                            if f.type == "ascii")
        self._bits = tuple((i, f"{self._keys[i]}.{name}", bit)
                           for i, f in enumerate(self.fields) if f.bits
                           for name, bit in f.bits.items())

    def pack(self, values: Mapping[str, Scalar], where: str, *lead: int) -> bytes:
        """Payload bytes of engineering `values` (every field required)."""
        missing = [f.name for f in self.fields if f.name not in values]
        if missing:
            raise ValueRejected(f"{where}: missing argument(s) {', '.join(missing)}")
        raws = [to_raw(f, values[f.name], where) for f in self.fields]
        return self._struct.pack(*lead, *raws)

    def unpack_raw(self, payload: bytes) -> tuple[int | bytes, ...]:
        """Lead values then raw field values; struct.error if the size differs."""
        return self._struct.unpack(payload)

    def decode(self, payload: bytes) -> dict[str, Scalar]:
        """Engineering values keyed `prefix + field` and `prefix + field.bit` (lead dropped)."""
        raws = self._struct.unpack(payload)[self._lead:]
        out: dict[str, Scalar] = dict(zip(self._keys, raws, strict=True))
        for i, key, inv, scale in self._scaled:
            out[key] = raws[i] / inv if inv is not None else raws[i] * scale
        for i, key in self._texts:
            out[key] = raws[i].rstrip(b"\0").decode("ascii", errors="replace")
        for i, key, bit in self._bits:
            out[key] = bool(raws[i] >> bit & 1)
        return out


# -- incremental decoding ---------------------------------------------------------

class FrameDecoder:
    """Turns arbitrary chunks of bytes into complete, CRC-valid frames.

    A candidate starts at a SYNC byte. A LEN outside min_len..max_len or a bad
    CRC drops only that SYNC byte and scanning resumes at the next byte, so a
    real frame hidden behind garbage is still found. At most one incomplete
    candidate (< max_len + FRAME_OVERHEAD bytes) is kept between feeds.
    """

    def __init__(self, sync: int, min_len: int, max_len: int) -> None:
        self._sync = sync
        self._min_len = min_len
        self._max_len = max_len
        self._buf = bytearray()
        self.dropped = 0
        """Bytes discarded as garbage so far (diagnostics)."""

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def needed(self) -> int:
        """Bytes still missing from the buffered candidate (0 when nothing is buffered)."""
        buf = self._buf
        if not buf:
            return 0
        if len(buf) < 2:
            return 1
        return buf[1] + FRAME_OVERHEAD - len(buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Frames completed by `data`, in order."""
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        sync, lo, hi = self._sync, self._min_len, self._max_len
        pos, end = 0, len(buf)
        while True:
            start = buf.find(sync, pos)
            if start < 0:
                self.dropped += end - pos
                pos = end
                break
            self.dropped += start - pos
            pos = start
            if end - pos < 2:
                break
            length = buf[pos + 1]
            if not lo <= length <= hi:
                pos += 1
                self.dropped += 1
                continue
            crc_at = pos + 2 + length
            if end < crc_at + 2:
                break
            body = bytes(buf[pos + 1:crc_at])
            if crc_hqx(body, CRC_INIT) != (buf[crc_at] << 8 | buf[crc_at + 1]):
                pos += 1
                self.dropped += 1
                continue
            frames.append(Frame(body[1], body[2], body[3:]))
            pos = crc_at + 2
        del buf[:pos]
        return frames

    def resync(self) -> list[Frame]:
        """Give up on the buffered candidate (its rest never came) and rescan after its SYNC.

        For a LEN byte corrupted upwards: the candidate would otherwise hold
        back the real frames behind it until max_len more bytes arrive.
        """
        if not self._buf:
            return []
        del self._buf[:1]
        self.dropped += 1
        return self.feed(b"")

    def clear(self) -> None:
        self.dropped += len(self._buf)
        self._buf.clear()
