"""`modctl simulate` as a real subprocess, probed by clients written from the specs.

Each test starts `python -m controller.cli.main simulate PROFILE` exactly as an
operator would, reads `port: /dev/pts/N` from its stdout, talks to that port
with plain pyserial (or pymodbus for the HC-200), then ends the simulator with
SIGTERM or SIGINT and expects exit status 0 at once. Every frame, CRC and
checksum is built here, independently of protocols/ and simulator/.

The raw clients open the ports with parity N even for the 8E1 HC-200: a Linux
pseudo-terminal has no UART, so it neither sends nor checks a parity bit and
refuses PARENB (EINVAL) once nothing else changes; the bytes are the same.
"""

from __future__ import annotations

import os
import re
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pymodbus
import pytest
import serial
from pymodbus.client import ModbusSerialClient

from tests.support.crc import crc16_ccitt_false, crc16_modbus

# Deadlines are generous for loaded CI machines; unloaded, a simulator is ready in
# about 1 s and exits 0.2 s after the signal, and the whole file takes under 10 s.
STARTUP_S = 15.0      # until the first stdout line
EXIT_S = 5.0          # "promptly" after SIGTERM/SIGINT
REPLY_S = 2.0         # an upper bound: every device answers within 50 ms
SILENCE_S = 0.3       # listening this long for a reply that must not come
PORT_LINE = re.compile(r"port: (/dev/pts/\d+)")
PYMODBUS_VERSION = "3.16.1"
HC200_MODEL = 0x4843


# -- independent checks, from the specs' definitions --------------------------------
def xor_checksum(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


def modbus_adu(pdu: bytes, unit: int = 1) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16_modbus(body).to_bytes(2, "little")


def scpi_line(text: str) -> bytes:
    body = text.encode("ascii")
    return body + b"*%02X\n" % xor_checksum(body)


def es4_frame(seq: int, cmd: int, payload: bytes = b"") -> bytes:
    body = bytes([2 + len(payload), seq, cmd]) + payload
    return b"\xa5" + body + crc16_ccitt_false(body).to_bytes(2, "big")


def test_independent_checks_match_catalogue_values() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert xor_checksum(b"OK") == 0x04


# -- the simulator process ----------------------------------------------------------
class SimProcess:
    """One `modctl simulate` subprocess."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env.pop("MODCTL_DEBUG", None)   # tracebacks only on request
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli.main", "simulate", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env)

    def first_line(self, timeout: float = STARTUP_S) -> str:
        """The first stdout line, read straight from the pipe with a deadline."""
        assert self.proc.stdout is not None
        fd, data = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + timeout
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, remaining))
            if not ready:
                pytest.fail(f"no complete stdout line within {timeout} s (got {data!r})")
            chunk = os.read(fd, 256)
            if not chunk:
                pytest.fail(f"stdout closed after {data!r}; exit status {self.proc.wait()}")
            data += chunk
        return data.split(b"\n", 1)[0].decode()

    def port(self) -> str:
        line = self.first_line()
        match = PORT_LINE.fullmatch(line)
        assert match, f"first line is {line!r}, not 'port: /dev/pts/N'"
        return match.group(1)

    def stop(self, signum: signal.Signals) -> None:
        """Send `signum`; the simulator must exit 0 within EXIT_S."""
        self.proc.send_signal(signum)
        t0 = time.monotonic()
        status = self.proc.wait(EXIT_S)
        assert status == 0, f"exit status {status} after {signum.name}: {self.stderr()}"
        assert time.monotonic() - t0 < EXIT_S

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None \
            else "(still running)"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def simulate() -> Iterator[Callable[..., SimProcess]]:
    started: list[SimProcess] = []

    def start(*args: str) -> SimProcess:
        sim = SimProcess(*args)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.kill()


def open_port(port: str, baudrate: int) -> serial.Serial:
    # Parity N even for the 8E1 HC-200: see the module docstring.
    return serial.Serial(port, baudrate=baudrate, bytesize=8, parity="N", stopbits=1,
                         timeout=REPLY_S, write_timeout=REPLY_S)


def read_until(link: serial.Serial, end: bytes) -> bytes:
    data = bytes(link.read_until(end, 256))
    assert data.endswith(end), f"incomplete reply {data!r}"
    return data


# -- HC-200: Modbus RTU ---------------------------------------------------------------
def test_hc200_answers_a_raw_modbus_read_then_stops_on_sigterm(
        simulate: Callable[..., SimProcess]) -> None:
    sim = simulate("hc-200")
    with open_port(sim.port(), 19200) as link:
        # 0x04 read input registers: address 9 (model), count 1.
        link.write(modbus_adu(bytes([0x04, 0x00, 0x09, 0x00, 0x01])))
        assert link.read(7) == modbus_adu(bytes([0x04, 0x02, 0x48, 0x43]))
        # Address 10 is outside the map: exception 0x02, illegal data address.
        link.write(modbus_adu(bytes([0x04, 0x00, 0x0A, 0x00, 0x01])))
        assert link.read(5) == modbus_adu(bytes([0x84, 0x02]))
    sim.stop(signal.SIGTERM)


def test_hc200_with_the_pymodbus_client_then_stops_on_sigint(
        simulate: Callable[..., SimProcess]) -> None:
    assert pymodbus.__version__ == PYMODBUS_VERSION   # its API changes between minor releases
    sim = simulate("hc-200")
    # pymodbus always opens its serial port with exclusive=True, and pyserial 3.5
    # then fails with EINVAL on a pty asked for even parity: a pty has no parity
    # to set (module docstring), so parity N puts the same bytes on the line.
    client = ModbusSerialClient(sim.port(), baudrate=19200, bytesize=8, parity="N",
                                stopbits=1, timeout=REPLY_S, retries=0)
    assert client.connect()
    try:
        reply = client.read_input_registers(9, count=1, device_id=1)
        assert not reply.isError(), reply
        assert reply.registers == [HC200_MODEL]
    finally:
        client.close()  # type: ignore[no-untyped-call]
    sim.stop(signal.SIGINT)


def test_silent_at_zero_answers_until_the_output_starts(
        simulate: Callable[..., SimProcess]) -> None:
    """Fault times count from the first output start: before it the device talks."""
    sim = simulate("hc-200", "--fault", "silent_at=0")
    read_model = modbus_adu(bytes([0x04, 0x00, 0x09, 0x00, 0x01]))
    with open_port(sim.port(), 19200) as link:
        link.write(read_model)
        assert link.read(7) == modbus_adu(bytes([0x04, 0x02, 0x48, 0x43]))
        enable = modbus_adu(bytes([0x06, 0x00, 0x02, 0x00, 0x01]))   # output_enable = 1
        link.write(enable)
        assert link.read(8) == enable                                  # echoed: accepted
        link.timeout = SILENCE_S
        link.write(read_model)
        assert link.read(7) == b""                                     # silent from now on
    sim.stop(signal.SIGTERM)


# -- US-300: SCPI-style lines -----------------------------------------------------------
def check_reply(line: bytes) -> str:
    """A checksummed reply line: `text*HH` CR LF with the right XOR; returns the text."""
    assert line.endswith(b"\r\n"), line
    match = re.fullmatch(rb"(.*)\*([0-9A-F]{2})\r\n", line)
    assert match, f"no *HH checksum in {line!r}"
    assert int(match.group(2), 16) == xor_checksum(match.group(1)), line
    return match.group(1).decode("ascii")


def test_us300_identifies_with_checksums_then_stops_on_sigint(
        simulate: Callable[..., SimProcess]) -> None:
    sim = simulate("us-300")
    with open_port(sim.port(), 115200) as link:
        link.write(scpi_line("*IDN?"))
        vendor, model, serial_no, firmware = check_reply(read_until(link, b"\n")).split(",")
        assert model == "US-300" and vendor and serial_no and firmware
        # A damaged checksum: refused with -350, not executed, queued for SYST:ERR?.
        link.write(b"*IDN?*00\n")
        assert check_reply(read_until(link, b"\n")).startswith("ERR -350,")
        link.write(scpi_line("SYST:ERR?"))
        assert check_reply(read_until(link, b"\n")).startswith("-350,")
        link.write(scpi_line("SYSTem:ERRor?"))
        assert check_reply(read_until(link, b"\n")) == '0,"No error"'
    sim.stop(signal.SIGINT)


# -- ES-4: framed binary ----------------------------------------------------------------------
def read_frame(link: serial.Serial) -> tuple[int, int, bytes]:
    """(SEQ, CMD, PAYLOAD) of one frame, its CRC checked."""
    head = link.read(2)
    assert len(head) == 2 and head[0] == 0xA5, f"bad frame start {head!r}"
    rest = link.read(head[1] + 2)
    assert len(rest) == head[1] + 2, f"frame truncated: {(head + rest)!r}"
    body = head[1:] + rest[:-2]
    assert int.from_bytes(rest[-2:], "big") == crc16_ccitt_false(body)
    return body[1], body[2], body[3:]


def test_es4_answers_get_info_then_stops_on_sigterm(simulate: Callable[..., SimProcess]) -> None:
    sim = simulate("es-4")
    request = es4_frame(0x42, 0x02)                        # GET_INFO, SEQ 0x42
    with open_port(sim.port(), 115200) as link:
        link.write(request)
        seq, cmd, payload = read_frame(link)
        assert (seq, cmd) == (0x42, 0x82)
        status, model, _serial, _major, _minor, channels = struct.unpack("<B8sIBBB", payload)
        assert (status, model, channels) == (0, b"ES-4\0\0\0\0", 2)
        # The same SEQ again is answered from memory, byte for byte.
        link.write(request)
        assert read_frame(link) == (seq, cmd, payload)
    sim.stop(signal.SIGTERM)


# -- refused fault options ------------------------------------------------------------------
BAD_FAULTS = [
    ("hc-200", "bogus=1", "unknown fault 'bogus'"),
    ("hc-200", "silent_at=soon", "silent_at takes a number"),
    ("hc-200", "silent_at", "is not NAME=VALUE"),
    ("hc-200", "lead_off_at=1", "does not apply to a thermal device"),
    ("es-4", "contact_lost=1,2", "does not apply to a tens device"),
]


def test_bad_fault_options_exit_2_with_a_message_and_no_traceback() -> None:
    sims = [(SimProcess(profile, "--fault", option), message)
            for profile, option, message in BAD_FAULTS]     # all at once: ~1 s in total
    try:
        for sim, message in sims:
            out, err = sim.proc.communicate(timeout=STARTUP_S)
            text = err.decode(errors="replace")
            assert sim.proc.returncode == 2, (message, text)
            assert out == b"", "no port may be announced"
            assert message in text and text.startswith("modctl: ")
            assert "Traceback" not in text
    finally:
        for sim, _ in sims:
            sim.kill()
