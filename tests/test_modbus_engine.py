"""The Modbus engine against a scripted RTU slave: in memory, byte for byte.

The slave (tests.support.devices.Slave) is written from the Modbus RTU rules,
independently of protocols.modbus_codec: its own framing, its own bit-by-bit CRC.
The few tests about real time or a real port (silence, late replies, a peer
that goes away, the profile's parity on a pty) run over a pseudo-terminal.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from controller.profiles.loader import resolve_profile
from protocols.errors import (
    CorruptReply,
    DeviceRefused,
    LinkLost,
    LinkTimeout,
    ProtocolViolation,
    ValueRejected,
)
from protocols.map_modbus import ModbusMap
from protocols.modbus import ModbusEngine
from protocols.modbus_codec import decode_bits, decode_register
from protocols.transport import SerialSettings, SerialTransport, Transport
from tests.pty_peer import PtyPeer, pty_peer
from tests.support.devices import HC_HOLDINGS, HC_INPUTS, TELEMETRY, Slave, adu
from tests.support.ports import MAX_WRITES, ScriptedPort
from tests.support.protocol import expected_protocol

REPLY_TIMEOUT_S = 0.05
RETRIES = 2
SETTINGS = SerialSettings(baudrate=19200)




@pytest.fixture(scope="module")
def hc_map() -> ModbusMap:
    protocol = resolve_profile("hc-200").profile.protocol
    assert isinstance(protocol, ModbusMap)
    return protocol


class Rig:
    """An engine, the slave it talks to, and the port between them (in memory or a pty)."""

    def __init__(self, port: ScriptedPort | PtyPeer, slave: Slave, engine: ModbusEngine) -> None:
        self.port, self.slave, self.engine = port, slave, engine


@contextmanager
def memory_rig(pmap: ModbusMap, slave: Slave, retries: int = RETRIES,
               timeout: float = REPLY_TIMEOUT_S, max_writes: int = MAX_WRITES) -> Iterator[Rig]:
    with ScriptedPort(slave, max_writes) as port:
        yield Rig(port, slave, ModbusEngine(port, pmap, timeout, retries))


@contextmanager
def pty_rig(pmap: ModbusMap, slave: Slave, retries: int = RETRIES,
            timeout: float = REPLY_TIMEOUT_S) -> Iterator[Rig]:
    with pty_peer(slave) as peer:
        engine = ModbusEngine(SerialTransport(peer.port, SETTINGS), pmap, timeout, retries)
        try:
            yield Rig(peer, slave, engine)
        finally:
            engine.close()


@pytest.fixture
def hc(hc_map: ModbusMap) -> Iterator[Rig]:
    with memory_rig(hc_map, Slave(1, HC_INPUTS, HC_HOLDINGS)) as rig:
        yield rig


@pytest.fixture
def hc_pty(hc_map: ModbusMap) -> Iterator[Rig]:
    """For the tests about real time: replies that come late or not at all."""
    with pty_rig(hc_map, Slave(1, HC_INPUTS, HC_HOLDINGS)) as rig:
        yield rig


def hc_engine(hc_map: ModbusMap) -> Callable[[Transport], ModbusEngine]:
    """An engine factory for expected_protocol."""
    return lambda port: ModbusEngine(port, hc_map, REPLY_TIMEOUT_S, RETRIES)


# --- reads --------------------------------------------------------------------


def test_telemetry_read_is_one_exact_request(hc_map: ModbusMap) -> None:
    # 0x04 from register 0, 6 registers; the reply carries 37.2 degC, drive -25 %, status
    # output enabled + pad connected, 120 s, 480 s, fault 0. CRCs low byte first.
    with expected_protocol(hc_engine(hc_map), [
        (bytes.fromhex("01 04 00 00 00 06 70 08"),
         bytes.fromhex("01 04 0C 01 74 FF E7 00 03 00 78 01 E0 00 00 9E 82")),
    ]) as engine:
        values = engine.read(TELEMETRY)
    assert values["pad_temp"] == 37.2
    assert values["drive"] == -25  # int16
    assert values["status"] == 3
    assert values["status.output_enabled"] is True
    assert values["status.pad_connected"] is True
    assert values["status.over_temp_trip"] is False
    assert values["status.calibration_mode"] is False
    assert (values["elapsed"], values["remaining"], values["fault_code"]) == (120, 480, 0)
    assert set(values) == set().union(*(hc_map.result_keys(n) for n in TELEMETRY))


def test_scaling_signedness_and_types(hc: Rig) -> None:
    hc.slave.inputs[0] = 0xFFEC  # -2.0 degC
    hc.slave.holdings[6] = 0xFF6A  # cal_offset -150 * 0.01
    values = hc.engine.read(["pad_temp", "setpoint", "cal_offset", "cal_gain", "cal_mode",
                             "serial_lo"])
    assert values == {"pad_temp": -2.0, "setpoint": 37.0, "cal_offset": -1.5,
                      "cal_gain": 1.0, "cal_mode": 0, "serial_lo": 0xE240}
    assert isinstance(values["cal_mode"], int)
    assert isinstance(values["setpoint"], float)


def test_status_bits(hc: Rig) -> None:
    hc.slave.inputs[2] = 0b1010_0110  # pad, over-temp, watchdog, calibration
    values = hc.engine.read(["status"])
    assert {k: v for k, v in values.items() if v is True} == {
        "status.pad_connected": True, "status.over_temp_trip": True,
        "status.watchdog_expired": True, "status.calibration_mode": True}
    assert values["status"] == 0xA6


def test_reads_coalesce_per_table_in_runs(hc: Rig) -> None:
    values = hc.engine.read(["model", "setpoint", "output_enable", "pad_temp", "status",
                             "firmware", "run_time", "pad_temp"])
    assert hc.slave.requests == [
        adu("01 04 00 00 00 01"),  # pad_temp
        adu("01 04 00 02 00 01"),  # status
        adu("01 04 00 06 00 01"),  # firmware
        adu("01 04 00 09 00 01"),  # model
        adu("01 03 00 00 00 03"),  # setpoint, run_time, output_enable
    ]
    assert values["model"] == 0x4843
    assert values["run_time"] == 600


def test_reads_split_at_the_per_request_limit() -> None:
    # An invented device with 40 consecutive input registers and the usual limit of 16.
    pmap = ModbusMap.model_validate({
        "family": "modbus_rtu", "unit_address": 3,
        "input_registers": {f"r{i:02d}": {"address": 0x200 + i, "type": "uint16"}
                            for i in range(40)},
        "holding_registers": {},
    })
    slave = Slave(3, {0x200 + i: i * 11 for i in range(40)}, {})
    with memory_rig(pmap, slave) as rig:
        values = rig.engine.read([f"r{i:02d}" for i in range(40)])
        assert slave.requests == [adu("03 04 02 00 00 10"), adu("03 04 02 10 00 10"),
                                  adu("03 04 02 20 00 08")]
        assert values == {f"r{i:02d}": i * 11 for i in range(40)}


def test_read_refuses_unknown_names_and_arguments(hc: Rig) -> None:
    with pytest.raises(ValueRejected, match="nonsense"):
        hc.engine.read(["pad_temp", "nonsense"])
    with pytest.raises(ValueRejected, match="no arguments"):
        hc.engine.read(["pad_temp"], {"value": 1})
    assert hc.port.received == b""
    assert hc.engine.read([]) == {}


# --- writes -------------------------------------------------------------------


def test_write_single(hc_map: ModbusMap) -> None:
    # 0x06 replies echo the request. setpoint 40.0 -> 400 = 0x0190; cal_offset -1.5 ->
    # -150 = 0xFF6A; cal_mode 0xCA1B. Then the two holdings read back with 0x03.
    with expected_protocol(hc_engine(hc_map), [
        (bytes.fromhex("01 06 00 00 01 90 88 36"), bytes.fromhex("01 06 00 00 01 90 88 36")),
        (bytes.fromhex("01 06 00 06 FF 6A A8 14"), bytes.fromhex("01 06 00 06 FF 6A A8 14")),
        (bytes.fromhex("01 06 00 08 CA 1B 1E A3"), bytes.fromhex("01 06 00 08 CA 1B 1E A3")),
        (bytes.fromhex("01 03 00 00 00 01 84 0A"), bytes.fromhex("01 03 02 01 90 B9 B8")),
        (bytes.fromhex("01 03 00 06 00 01 64 0B"), bytes.fromhex("01 03 02 FF 6A 79 9B")),
    ]) as engine:
        assert engine.write("setpoint", {"value": 40.0}) == {}
        assert engine.write("cal_offset", {"value": -1.5}) == {}
        assert engine.write("cal_mode", {"value": 0xCA1B}) == {}
        assert engine.read(["setpoint", "cal_offset"]) == {"setpoint": 40.0, "cal_offset": -1.5}


def test_write_single_reaches_the_slaves_registers(hc: Rig) -> None:
    hc.engine.write("setpoint", {"value": 40.0})
    hc.engine.write("cal_offset", {"value": -1.5})
    hc.engine.write("cal_mode", {"value": 0xCA1B})
    assert (hc.slave.holdings[0], hc.slave.holdings[6], hc.slave.holdings[8]) == (
        400, 0xFF6A, 0xCA1B)


def test_write_many_is_one_request(hc_map: ModbusMap) -> None:
    # 0x10 from register 1, 3 registers, 6 bytes: run_time 605, output_enable 0, watchdog 2;
    # the reply echoes address and count.
    with expected_protocol(hc_engine(hc_map), [
        (bytes.fromhex("01 10 00 01 00 03 06 02 5D 00 00 00 02 DA AB"),
         bytes.fromhex("01 10 00 01 00 03 D1 C8")),
    ]) as engine:
        engine.write_many({"watchdog": 2, "run_time": 605, "output_enable": 0})


def test_write_many_reaches_the_slaves_registers(hc: Rig) -> None:
    hc.engine.write_many({"watchdog": 2, "run_time": 605, "output_enable": 0})
    assert [hc.slave.holdings[a] for a in (1, 2, 3)] == [605, 0, 2]


@pytest.mark.parametrize(("entry", "value", "match"), [
    ("setpoint", 46.0, r"setpoint: value 46 degC \(raw 460\) is outside .*50\.\.450"),
    ("setpoint", 37.05, "setpoint: value 37.05 is not a multiple"),
    ("output_enable", 2, r"output_enable: .*one of 0, 1"),
    ("watchdog", 61, r"watchdog: .*0\.\.60"),
    ("pad_temp", 30.0, "pad_temp: cannot write, it is an input register"),
    ("nonsense", 1, "nonsense: cannot write, it is not in the map"),
])
def test_refused_writes_send_nothing(hc: Rig, entry: str, value: float, match: str) -> None:
    with pytest.raises(ValueRejected, match=match):
        hc.engine.write(entry, {"value": value})
    assert hc.port.received == b""


def test_refused_write_many_sends_nothing(hc: Rig) -> None:
    with pytest.raises(ValueRejected, match="watchdog"):
        hc.engine.write_many({"run_time": 600, "output_enable": 0, "watchdog": 99})
    with pytest.raises(ValueRejected, match="consecutive"):
        hc.engine.write_many({"setpoint": 40.0, "watchdog": 2})
    with pytest.raises(ValueRejected, match="at least one"):
        hc.engine.write_many({})
    with pytest.raises(ValueRejected, match="exactly 'value'"):
        hc.engine.write("setpoint", {"value": 40.0, "extra": 1})
    assert hc.port.received == b""
    assert hc.slave.holdings == HC_HOLDINGS


# --- device refusals, faults and retries ------------------------------------------


def test_exception_reply_names_the_register_and_is_not_retried(hc: Rig) -> None:
    hc.slave.refuse[2] = 3
    with pytest.raises(DeviceRefused) as info:
        hc.engine.write("output_enable", {"value": 1})
    assert info.value.entry == "output_enable"
    assert info.value.code == 3
    assert info.value.text.startswith("illegal data value (out of range")  # the profile's text
    assert "output_enable" in str(info.value)
    assert len(hc.slave.requests) == 1
    # All or nothing: refusing one register of a 0x10 leaves the others unwritten.
    with pytest.raises(DeviceRefused, match="run_time,output_enable"):
        hc.engine.write_many({"run_time": 900, "output_enable": 1})
    assert hc.slave.holdings[1] == 600


def test_read_of_a_register_the_device_lacks(hc_map: ModbusMap) -> None:
    data = hc_map.model_dump()
    data["input_registers"]["spare"] = {"address": 10, "type": "uint16"}
    pmap = ModbusMap.model_validate(data)
    with memory_rig(pmap, Slave(1, HC_INPUTS, HC_HOLDINGS)) as rig:
        with pytest.raises(DeviceRefused) as info:
            rig.engine.read(["model", "spare"])
        assert (info.value.entry, info.value.code, info.value.text) == (
            "model,spare", 2, "illegal data address")


def test_corrupt_reply_is_retried_then_succeeds(hc: Rig,
                                               caplog: pytest.LogCaptureFixture) -> None:
    hc.slave.corrupt_next = 1
    hc.slave.truncate_next = 1
    with caplog.at_level(logging.DEBUG, logger="protocols.modbus"):
        assert hc.engine.read(["pad_temp"]) == {"pad_temp": 37.2}
    assert len(hc.slave.requests) == 3
    assert "bad CRC" in caplog.text
    assert "truncated" in caplog.text


def test_corrupt_every_time_raises_corrupt_reply(hc: Rig) -> None:
    hc.slave.corrupt_next = 99
    with pytest.raises(CorruptReply, match="after 3 attempts"):
        hc.engine.read(["pad_temp"])
    assert len(hc.slave.requests) == 3


def test_silence_is_link_timeout_after_retries_in_bounded_time(hc_pty: Rig) -> None:
    hc_pty.slave.silent = True
    start = time.monotonic()
    with pytest.raises(LinkTimeout, match="no reply"):
        hc_pty.engine.read(TELEMETRY)
    elapsed = time.monotonic() - start
    assert len(hc_pty.slave.requests) == 1 + RETRIES
    assert (1 + RETRIES) * REPLY_TIMEOUT_S <= elapsed < (1 + RETRIES) * REPLY_TIMEOUT_S + 0.5
    hc_pty.slave.silent = False
    assert hc_pty.engine.read(["pad_temp"]) == {"pad_temp": 37.2}  # the link recovers


def test_reply_from_another_unit_is_a_violation(hc: Rig) -> None:
    hc.slave.reply_unit = 2
    with pytest.raises(ProtocolViolation, match="unit 2"):
        hc.engine.read(["pad_temp"])
    assert len(hc.slave.requests) == 1 + RETRIES


def test_late_reply_is_not_taken_for_the_next_one(hc_pty: Rig) -> None:
    hc_pty.slave.late_next = REPLY_TIMEOUT_S * 1.5
    assert hc_pty.engine.read(["pad_temp"]) == {"pad_temp": 37.2}
    time.sleep(0.05)  # the duplicate reply to the retried request is now waiting
    hc_pty.slave.inputs[0] = 400
    assert hc_pty.engine.read(["pad_temp"]) == {"pad_temp": 40.0}


def test_peer_gone_is_link_lost_at_once(hc_map: ModbusMap) -> None:
    # A long reply timeout: a retried or waited-out failure would take seconds.
    with pty_rig(hc_map, Slave(1, HC_INPUTS, HC_HOLDINGS), timeout=1.0) as rig:
        rig.port.close()
        start = time.monotonic()
        with pytest.raises(LinkLost):
            rig.engine.read(["pad_temp"])
        assert time.monotonic() - start < 0.5


def test_silence_with_the_profiles_link_settings_is_link_timeout(hc_map: ModbusMap) -> None:
    # The HC-200 runs even parity; on a pty a timeout-driven reconfigure once
    # escaped as termios.error (EINVAL) instead of a protocol error.
    link = resolve_profile("hc-200").profile.link
    settings = link.settings()
    slave = Slave(1, HC_INPUTS, HC_HOLDINGS)
    slave.silent = True
    with pty_peer(slave) as peer:
        engine = ModbusEngine(SerialTransport(peer.port, settings), hc_map, link.reply_timeout_s,
                              retries=1)
        try:
            with pytest.raises(LinkTimeout):
                engine.read(["pad_temp"])
        finally:
            engine.close()


def test_every_exchange_is_logged_at_debug(hc_map: ModbusMap,
                                          caplog: pytest.LogCaptureFixture) -> None:
    with expected_protocol(hc_engine(hc_map), [
        (bytes.fromhex("01 04 00 00 00 01 31 CA"), bytes.fromhex("01 04 02 01 74 B8 87")),
    ]) as engine, caplog.at_level(logging.DEBUG, logger="protocols.modbus"):
        engine.read(["pad_temp"])
    assert "01 04 00 00 00 01 31 ca -> 01 04 02 01 74 b8 87 in " in caplog.text


# --- an invented device --------------------------------------------------------

INVENTED_MAP = """
family: modbus_rtu
unit_address: 7
max_registers_per_request: 2
exception_codes: {3: value refused by the bath controller}
input_registers:
  bath_temp: {address: 0x20, type: int16, scale: 0.01, unit: degC}
  flow:      {address: 0x21, type: uint16, scale: 0.1, unit: l/min}
  flags:     {address: 0x22, type: bits, bits: {heater: 3, pump: 15}}
holding_registers:
  target:    {address: 0x100, type: int16, scale: 0.01, unit: degC, min: 1000, max: 4200}
  heater_on: {address: 0x101, type: uint16, allowed: [0, 1]}
  power:     {address: 0x102, type: uint16, scale: 0.5, unit: W, min: 0, max: 200}
"""


def test_invented_device_is_driven_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "bath.yaml"
    path.write_text(INVENTED_MAP)
    pmap = ModbusMap.model_validate(yaml.safe_load(path.read_text()))
    slave = Slave(7, {0x20: (-125) & 0xFFFF, 0x21: 123, 0x22: 0x8008},
                  {0x100: 2500, 0x101: 0, 0x102: 0})
    with memory_rig(pmap, slave) as rig:
        values = rig.engine.read(["flags", "flow", "bath_temp", "target"])
        assert slave.requests == [adu("07 04 00 20 00 02"), adu("07 04 00 22 00 01"),
                                  adu("07 03 01 00 00 01")]
        assert values == {"bath_temp": -1.25, "flow": 12.3, "flags": 0x8008,
                          "flags.heater": True, "flags.pump": True, "target": 25.0}
        slave.requests.clear()
        rig.engine.write("target", {"value": 37.25})
        rig.engine.write_many({"power": 87.5, "heater_on": 1})
        assert slave.requests == [adu("07 06 01 00 0E 8D"),
                                  adu("07 10 01 01 00 02 04 00 01 00 AF")]
        assert slave.holdings == {0x100: 3725, 0x101: 1, 0x102: 175}
        with pytest.raises(ValueRejected, match=r"target: .*outside .*1000\.\.4200"):
            rig.engine.write("target", {"value": 42.01})
        with pytest.raises(ValueRejected, match="not a multiple"):
            rig.engine.write("target", {"value": 37.255})
        with pytest.raises(ValueRejected, match="exceed the device's 2 per request"):
            rig.engine.write_many({"target": 30.0, "heater_on": 0, "power": 10.0})
        slave.refuse[0x101] = 3
        with pytest.raises(DeviceRefused, match=r"heater_on: .*bath controller"):
            rig.engine.write("heater_on", {"value": 0})
        assert len(slave.requests) == 3


def test_engine_decodes_as_the_codec_does() -> None:
    """The engine's precomputed decoding agrees with the codec's reference decoding."""
    pmap = ModbusMap.model_validate(yaml.safe_load(INVENTED_MAP))
    regs = pmap.input_registers | pmap.holding_registers
    rng = random.Random(20261128)
    slave = Slave(7, {}, {})
    with memory_rig(pmap, slave, max_writes=200 * 4) as rig:
        for _ in range(200):
            for name, reg in regs.items():
                table = slave.inputs if name in pmap.input_registers else slave.holdings
                table[reg.address] = rng.choice([0, 1, 0x7FFF, 0x8000, 0xFFFF,
                                                 rng.randrange(0x10000)])
            values = rig.engine.read(list(regs))
            for name, reg in regs.items():
                table = slave.inputs if name in pmap.input_registers else slave.holdings
                word = table[reg.address]
                assert values[name] == decode_register(reg, word), name
                for bit_name, bit in decode_bits(reg, word).items():
                    assert values[f"{name}.{bit_name}"] is bit
