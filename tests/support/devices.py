"""Scripted devices written from the manuals, independently of the codecs under test.

Each is a `Callable[[bytes], bytes]` for a port in memory (tests.support.ports)
or a pty peer (tests.pty_peer): it frames what the host wrote by itself and
returns its answer, with switches for the faults the engines must survive.

- Slave: a Modbus RTU slave with register tables (HC-200 tables below).
- FakeUs300: a US-300 line device with checksums and an error queue.
- ScriptedDevice: an ES-4-like framed device that remembers its last SEQ.
"""

from __future__ import annotations

import operator
import struct
import time
from collections import deque
from functools import reduce

from tests.support.crc import ccitt_crc_bytes, modbus_crc_bytes

# -- Modbus RTU ---------------------------------------------------------------------------

def adu(text: str) -> bytes:
    """Hex of a frame without its CRC -> the frame with it."""
    body = bytes.fromhex(text)
    return body + modbus_crc_bytes(body)


class Slave:
    """A Modbus RTU slave with register tables and fault injection, for a port or a pty peer."""

    def __init__(self, unit: int, inputs: dict[int, int], holdings: dict[int, int]) -> None:
        self.unit = unit
        self.inputs = dict(inputs)
        self.holdings = dict(holdings)
        self.refuse: dict[int, int] = {}  # holding address -> exception code on write
        self.corrupt_next = 0  # replies sent with a flipped CRC bit
        self.truncate_next = 0  # replies cut short
        self.late_next = 0.0  # seconds to sit on the next reply
        self.silent = False
        self.reply_unit: int | None = None  # answer as another unit
        self.requests: list[bytes] = []
        self._buf = bytearray()

    def __call__(self, data: bytes) -> bytes:
        self._buf += data
        out = b""
        while (frame := self._take_frame()) is not None:
            out += self._answer(frame)
        return out

    def _take_frame(self) -> bytes | None:
        if len(self._buf) < 2:
            return None
        fc = self._buf[1]
        if fc in (3, 4, 6):
            need = 8
        elif fc == 0x10:
            if len(self._buf) < 7:
                return None
            need = 9 + self._buf[6]
        else:
            self._buf.clear()
            return None
        if len(self._buf) < need:
            return None
        frame = bytes(self._buf[:need])
        del self._buf[:need]
        return frame

    def _answer(self, frame: bytes) -> bytes:
        if modbus_crc_bytes(frame[:-2]) != frame[-2:] or frame[0] != self.unit:
            return b""  # the spec: no reply at all
        self.requests.append(frame)
        if self.silent:
            return b""
        body = self._execute(frame)
        reply = bytes((self.reply_unit or self.unit,)) + body
        reply += modbus_crc_bytes(reply)
        if self.corrupt_next:
            self.corrupt_next -= 1
            reply = reply[:-1] + bytes((reply[-1] ^ 0x01,))
        elif self.truncate_next:
            self.truncate_next -= 1
            reply = reply[:-3]
        if self.late_next:
            time.sleep(self.late_next)
            self.late_next = 0.0
        return reply

    def _execute(self, frame: bytes) -> bytes:
        fc, address, count_or_value = frame[1], *struct.unpack(">HH", frame[2:6])
        if fc in (3, 4):
            table = self.holdings if fc == 3 else self.inputs
            span = range(address, address + count_or_value)
            if any(a not in table for a in span):
                return bytes((fc | 0x80, 2))
            return bytes((fc, 2 * count_or_value)) + b"".join(
                struct.pack(">H", table[a]) for a in span)
        if fc == 6:
            values = {address: count_or_value}
        else:
            words = struct.unpack(f">{count_or_value}H", frame[7:-2])
            values = {address + i: w for i, w in enumerate(words)}
        for a in values:
            if a not in self.holdings:
                return bytes((fc | 0x80, 2))
            if a in self.refuse:
                return bytes((fc | 0x80, self.refuse[a]))
        self.holdings.update(values)  # all or nothing
        return frame[1:6]


# HC-200 registers as its manual lays them out (defaults after power-up for holdings).
HC_INPUTS = {0: 372, 1: 0xFFE7, 2: 0x0003, 3: 120, 4: 480, 5: 0, 6: 102, 7: 0x0001,
             8: 0xE240, 9: 0x4843}
HC_HOLDINGS = {0: 370, 1: 600, 2: 0, 3: 0, 4: 460, 5: 50, 6: 0, 7: 10000, 8: 0, 9: 0}
TELEMETRY = ["pad_temp", "drive", "status", "elapsed", "remaining", "fault_code"]


# -- SCPI-style lines ---------------------------------------------------------------------

def hh(text: str) -> str:
    return format(reduce(operator.xor, text.encode("ascii"), 0), "02X")


def req(text: str) -> bytes:
    return f"{text}*{hh(text)}\n".encode("ascii")


def keyword_matches(given: str, long: str) -> bool:
    short = "".join(c for c in long if c.isupper() or c.isdigit() or c == "*")
    return given.upper() in (long.upper(), short.upper())


def header_matches(given: str, long: str) -> bool:
    parts, wanted = given.split(":"), long.split(":")
    return len(parts) == len(wanted) and all(map(keyword_matches, parts, wanted))


class FakeUs300:
    """A US-300 with just enough behaviour, plus fault injection."""

    HEADERS = ("*IDN", "*RST", "SYSTem:ERRor", "SOURce:FREQuency", "SOURce:INTensity",
               "OUTPut", "ABORt", "STATus", "SYSTem:SERVice", "CALibration:POWer:GAIN")

    def __init__(self) -> None:
        self.buf = b""
        self.lines: list[str] = []
        self.errors: deque[tuple[int, str]] = deque(maxlen=8)
        self.freq, self.intensity, self.output, self.gain = 1, 0.0, False, 1.0
        self.service = False
        self.silent = False
        self.corrupt_next = 0       # replies to damage on the way back
        self.checksum_error_next = 0  # requests "damaged on the way in"
        self.runaway_next = 0       # replies replaced by a long line without LF

    def __call__(self, data: bytes) -> bytes:
        self.buf += data
        out = b""
        while b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            out += self.handle(line.rstrip(b"\r").decode("ascii"))
        return out

    def handle(self, line: str) -> bytes:
        self.lines.append(line)
        if self.silent:
            return b""
        if self.runaway_next:
            self.runaway_next -= 1
            return b"X" * 300
        checked = len(line) >= 3 and line[-3] == "*"
        if checked and (hh(line[:-3]) != line[-2:] or self.checksum_error_next):
            self.checksum_error_next = max(0, self.checksum_error_next - 1)
            answer = self.err(-350, "Checksum error")
        else:
            answer = self.execute(line[:-3] if checked else line)
        if checked:
            answer += "*" + hh(answer)
        wire = (answer + "\r\n").encode("ascii")
        if self.corrupt_next:
            self.corrupt_next -= 1
            wire = b"#" + wire[1:]
        return wire

    def err(self, code: int, text: str) -> str:
        self.errors.append((code, text))
        return f'ERR {code},"{text}"'

    def execute(self, body: str) -> str:
        head, _, arg = body.partition(" ")
        query = head.endswith("?")
        name = next((h for h in self.HEADERS if header_matches(head.rstrip("?"), h)), None)
        if name is None:
            return self.err(-113, "Undefined header")
        if query:
            return self.query(name)
        return self.command(name, arg.split(",") if arg else [])

    def query(self, name: str) -> str:
        if name == "SYSTem:ERRor":
            code, text = self.errors.popleft() if self.errors else (0, "No error")
            return f'{code},"{text}"'
        answers = {
            "*IDN": "Generic Therapy Devices,US-300,SN0042,1.2.0",
            "SOURce:FREQuency": str(self.freq),
            "SOURce:INTensity": f"{self.intensity:.1f}",
            "OUTPut": "ON" if self.output else "OFF",
            "STATus": f"{'RUN' if self.output else 'IDLE'},12,288,{87 if self.output else 0},0",
            "CALibration:POWer:GAIN": f"{self.gain:.3f}",
        }
        return answers.get(name) or self.err(-400, "Query error")

    def command(self, name: str, args: list[str]) -> str:
        if name in ("*RST", "ABORt"):
            self.output = False
            if name == "*RST":
                self.errors.clear()
            return "OK"
        if name == "SOURce:INTensity" and len(args) == 1:
            value = float(args[0])
            if not 0.0 <= value <= 3.0:
                return self.err(-222, "Data out of range")
            self.intensity = value
        elif name == "SOURce:FREQuency" and args in (["1"], ["3"]):
            self.freq = int(args[0])
        elif name == "OUTPut" and args in (["ON"], ["OFF"]):
            if args == ["ON"] and self.intensity == 0.0:
                return self.err(-221, "Settings conflict")
            self.output = args == ["ON"]
        elif name == "SYSTem:SERVice" and args in (["ON", "4321"], ["OFF"]):
            self.service = args[0] == "ON"
        elif name == "CALibration:POWer:GAIN" and len(args) == 1:
            if not self.service:
                return self.err(-221, "Settings conflict")
            self.gain = float(args[0])
        else:
            return self.err(-102, "Syntax error")
        return "OK"


# -- framed binary (ES-4) ------------------------------------------------------------------

# Command codes, and replies of an ES-4 with e-stop latched, channel 0 running at 25.0 mA.
PING, GET_INFO, CONFIGURE, STOP, GET_STATUS, EVENT = 0x01, 0x02, 0x10, 0x13, 0x20, 0x70
STATUS_PAYLOAD = bytes([0b0001, 2, 0xFA, 0x00, 0xB0, 0x04, 0x0A, 0x00, 0x32, 0x00,
                        0, 0, 0, 0xE8, 0x03, 0, 0, 0, 0])
INFO_PAYLOAD = b"ES-4\0\0\0\0" + (4242).to_bytes(4, "little") + bytes([1, 2, 2])


def ref_frame(seq: int, cmd: int, payload: bytes = b"", sync: int = 0xA5) -> bytes:
    """A frame built from the manual's layout: SYNC LEN SEQ CMD PAYLOAD CRC_HI CRC_LO."""
    body = bytes([2 + len(payload), seq, cmd]) + payload
    return bytes([sync]) + body + ccitt_crc_bytes(body)


def es4_event(kind: int, channel: int, value: int) -> bytes:
    return ref_frame(0, EVENT, bytes([kind, channel]) + value.to_bytes(2, "little"))


class ScriptedDevice:
    """The device side: frames by itself, executes a SEQ once, resends its remembered reply.

    `replies` gives the payload after the status byte per command code; `status`
    overrides the status per code. `before`/`after` are bytes sent around the
    next replies (events, garbage, stale frames), one entry per reply.
    """

    def __init__(self, sync: int = 0xA5, offset: int = 0x80, ok: int = 0) -> None:
        self.sync, self.offset, self.ok = sync, offset, ok
        self.replies: dict[int, bytes] = {GET_STATUS: STATUS_PAYLOAD, GET_INFO: INFO_PAYLOAD}
        self.status: dict[int, int] = {}
        self.remembered: tuple[int, bytes] | None = None
        self.requests: list[bytes] = []
        self.executed: list[tuple[int, int, bytes]] = []
        self.drop_replies = 0
        self.silent = False
        self.before: list[bytes] = []
        self.after: list[bytes] = []
        self._buf = bytearray()

    def __call__(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        while (frame := self._take()) is not None:
            self.requests.append(frame)
            seq, cmd, payload = frame[2], frame[3], frame[4:-2]
            if self.remembered is not None and self.remembered[0] == seq:
                reply = self.remembered[1]  # a repeat: not executed again
            else:
                self.executed.append((seq, cmd, payload))
                status = self.status.get(cmd, self.ok)
                body = self.replies.get(cmd, b"") if status == self.ok else b""
                reply = ref_frame(seq, (cmd + self.offset) & 0xFF, bytes([status]) + body,
                                  self.sync)
                self.remembered = (seq, reply)
            if self.silent:
                continue
            if self.drop_replies:
                self.drop_replies -= 1
                continue
            out += (self.before.pop(0) if self.before else b"") + reply
            out += self.after.pop(0) if self.after else b""
        return bytes(out)

    def _take(self) -> bytes | None:
        buf = self._buf
        while True:
            start = buf.find(self.sync)
            if start < 0:
                buf.clear()
                return None
            del buf[:start]
            if len(buf) < 2 or len(buf) < buf[1] + 4:
                return None
            frame = bytes(buf[:buf[1] + 4])
            if ccitt_crc_bytes(frame[1:-2]) == frame[-2:]:
                del buf[:len(frame)]
                return frame
