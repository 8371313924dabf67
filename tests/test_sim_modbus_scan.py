"""The simulated Modbus device's request scan: incremental, and the same as a full rescan.

The scan keeps a running CRC per candidate start instead of rescanning its buffer on
every read. `Rescan` below is the plain algorithm it replaced (every start, every
stop, whole CRCs, on every read): the endpoint must frame exactly what it frames,
skip exactly what it skips and keep exactly what it keeps, however the bytes arrive.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.profiles.loader import resolve_profile
from controller.profiles.model import Profile
from protocols.crc import crc16_modbus
from simulator import modbus_device
from simulator.faults import parse_faults
from simulator.modbus_device import (
    COUNTED_LENGTHS,
    FIXED_LENGTHS,
    MAX_BUFFER,
    MIN_FRAME,
    STALE_PARTIAL_S,
    UNKNOWN_SCAN_MAX,
    ModbusEndpoint,
)
from simulator.server import build_endpoint, build_model

# The longest request the scan can wait for: function 0x17, byte count 255.
LONGEST_REQUEST = max(header + 255 + 2 for _, header in COUNTED_LENGTHS.values())


class Rescan:
    """Reference: the whole buffer searched from its start on every read."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.discarded = 0
        self.last_rx = 0.0

    def receive(self, data: bytes, now: float) -> list[bytes]:
        self.buf += data
        self.last_rx = now
        frames = []
        while (found := self._find()) is not None:
            start, length = found
            self.discarded += start
            frames.append(bytes(self.buf[start:start + length]))
            del self.buf[:start + length]
        if len(self.buf) > MAX_BUFFER:
            self.discarded += len(self.buf) - MAX_BUFFER
            del self.buf[:-MAX_BUFFER]
        return frames

    def tick(self, now: float) -> None:
        if self.buf and now - self.last_rx > STALE_PARTIAL_S:
            self.discarded += len(self.buf)
            self.buf.clear()

    def _find(self) -> tuple[int, int] | None:
        buf = self.buf
        for start in range(len(buf) - MIN_FRAME + 1):
            function = buf[start + 1]
            if function in FIXED_LENGTHS:
                lengths = [FIXED_LENGTHS[function]]
            elif function in COUNTED_LENGTHS:
                index, header = COUNTED_LENGTHS[function]
                if start + index >= len(buf):
                    continue
                lengths = [header + buf[start + index] + 2]
            else:                            # unknown function: the first CRC match
                lengths = list(range(MIN_FRAME, UNKNOWN_SCAN_MAX + 1))
            for length in lengths:
                frame = buf[start:start + length]
                if (start + length <= len(buf)
                        and crc16_modbus(bytes(frame[:-2])) == frame[-2] | frame[-1] << 8):
                    return start, length
        return None


@cache
def hc200() -> Profile:
    return resolve_profile("hc-200").profile


class Recorder:
    """The HC-200 endpoint on a test clock, recording the requests it frames."""

    def __init__(self) -> None:
        self.now = 1000.0
        model = build_model(hc200(), parse_faults([]), clock=lambda: self.now)
        endpoint = build_endpoint(hc200(), model)
        assert isinstance(endpoint, ModbusEndpoint)
        self.endpoint = endpoint
        self.frames: list[bytes] = []
        endpoint._handle = self._record      # type: ignore[method-assign]

    def _record(self, frame: bytes, now: float) -> bytes | None:
        self.frames.append(frame)
        return None


def with_crc(body: bytes) -> bytes:
    return body + crc16_modbus(body).to_bytes(2, "little")


@st.composite
def request(draw: st.DrawFn) -> bytes:
    """A request of any framing (fixed, counted, unknown length), maybe broken."""
    function = draw(st.one_of(st.sampled_from([*FIXED_LENGTHS, *COUNTED_LENGTHS]),
                              st.integers(0, 255)))
    unit = draw(st.sampled_from([1, 1, 0, 2]))
    if function in FIXED_LENGTHS:
        data = draw(st.binary(min_size=FIXED_LENGTHS[function] - 4,
                              max_size=FIXED_LENGTHS[function] - 4))
    elif function in COUNTED_LENGTHS:
        index, header = COUNTED_LENGTHS[function]
        count = draw(st.one_of(st.integers(0, 8), st.integers(0, 255)))
        data = (draw(st.binary(min_size=index - 2, max_size=index - 2)) + bytes((count,))
                + draw(st.binary(min_size=header - index - 1 + count,
                                 max_size=header - index - 1 + count)))
    else:
        data = draw(st.binary(max_size=UNKNOWN_SCAN_MAX + 4))
    frame = with_crc(bytes((unit, function)) + data)
    damage = draw(st.sampled_from(["none", "none", "cut", "flip"]))
    if damage == "cut":
        return frame[:draw(st.integers(0, len(frame) - 1))]
    if damage == "flip":
        at = draw(st.integers(0, len(frame) - 1))
        return frame[:at] + bytes((frame[at] ^ 1 << draw(st.integers(0, 7)),)) + frame[at + 1:]
    return frame


def pieces(stream: bytes, cuts: list[int]) -> Iterator[bytes]:
    edges = [0, *sorted(cuts), len(stream)]
    return (stream[a:b] for a, b in itertools.pairwise(edges))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(request(), st.binary(max_size=60)), max_size=12),
       st.data())
def test_scan_frames_exactly_what_a_full_rescan_frames(parts: list[bytes],
                                                       data: st.DataObject) -> None:
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    rec, ref = Recorder(), Rescan()
    for chunk in pieces(stream, cuts):
        rec.now += data.draw(st.sampled_from([0.0, 0.001, 2 * STALE_PARTIAL_S]))
        rec.endpoint.tick(rec.now)
        ref.tick(rec.now)
        before = len(rec.frames)
        rec.endpoint.receive(chunk, rec.now)
        assert rec.frames[before:] == ref.receive(chunk, rec.now)
        assert rec.endpoint.discarded_bytes == ref.discarded
        assert rec.endpoint._rx.buf == ref.buf


@pytest.mark.parametrize("seed", range(3))
def test_scan_matches_a_full_rescan_on_garbage_across_the_buffer_limit(seed: int) -> None:
    """Random bytes (with the odd chance CRC match) past MAX_BUFFER, in uneven reads."""
    rng = random.Random(seed)
    stream = bytes(rng.randrange(256) for _ in range(3 * MAX_BUFFER))
    rec, ref = Recorder(), Rescan()
    at = 0
    while at < len(stream):
        step = rng.choice([1, 3, 64, 700])
        chunk, at = stream[at:at + step], at + step
        before = len(rec.frames)
        rec.endpoint.receive(chunk, rec.now)
        assert rec.frames[before:] == ref.receive(chunk, rec.now)
        assert (rec.endpoint.discarded_bytes, rec.endpoint._rx.buf) == (ref.discarded, ref.buf)


GARBAGE = {
    "random": bytes(random.Random(1).randrange(256) for _ in range(3000)),
    "zeros": bytes(3000),
    "all 0x17": b"\x17" * 3000,                       # counted, every start a candidate
    "0x14/0xff": bytes(random.Random(2).choice([0x14, 0xFF]) for _ in range(3000)),
}


@pytest.mark.parametrize("step", [1, 7, 4096])
@pytest.mark.parametrize("name", list(GARBAGE))
def test_scan_work_per_byte_is_at_most_one_request_length(
        monkeypatch: pytest.MonkeyPatch, name: str, step: int) -> None:
    """Each start's CRC runs at most once over the longest request it can begin, and
    only starts within the last LONGEST_REQUEST bytes are still candidates."""
    hashed = 0
    states = modbus_device._crc_states

    def counting(data: bytes | bytearray, crc: int) -> list[int]:
        nonlocal hashed
        hashed += len(data)
        return states(data, crc)

    monkeypatch.setattr(modbus_device, "_crc_states", counting)
    rec = Recorder()
    stream = GARBAGE[name]
    for at in range(0, len(stream), step):
        rec.endpoint.receive(stream[at:at + step], rec.now)
        assert len(rec.endpoint._rx._live) <= LONGEST_REQUEST
    assert hashed <= LONGEST_REQUEST * len(stream), hashed / len(stream)


@pytest.mark.parametrize("length", range(MIN_FRAME, UNKNOWN_SCAN_MAX + 3))
def test_unknown_function_requests_are_framed_up_to_the_scan_limit(length: int) -> None:
    rng = random.Random(length)
    while True:                              # a body with no shorter CRC match in it
        frame = with_crc(bytes((1, 0x41)) + rng.randbytes(length - 4))
        if not Rescan().receive(frame[:-1], 0.0):
            break
    stream = b"\x00" * 9 + frame + b"\x00" * 9
    rec, ref = Recorder(), Rescan()
    expected: list[bytes] = []
    for at in range(0, len(stream), 5):
        rec.endpoint.receive(stream[at:at + 5], rec.now)
        expected += ref.receive(stream[at:at + 5], rec.now)
    assert rec.frames == expected
    assert (frame in expected) == (length <= UNKNOWN_SCAN_MAX)
