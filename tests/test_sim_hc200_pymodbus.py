"""Interoperability: pymodbus 3.16.1's serial client against the simulated HC-200.

pymodbus is an independent Modbus implementation; a simulator it can talk to
frames, addresses and checksums as the standard says, not just as our own
controller reads it.

Parity: the HC-200 uses 8E1, but pymodbus's serial client always opens its port
with `exclusive=True`, and pyserial 3.5 fails with EINVAL (errno 22) when
`exclusive=True` and even parity are combined on a raw pty (measured here;
either alone works). A pty does not emulate parity anyway, so the client opens
with parity N: the bytes on the wire are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pymodbus
import pytest
from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from simulator.server import SimulatedDevice
from tests.conftest import SimFactory

PYMODBUS_VERSION = "3.16.1"  # its API breaks between minor releases: pinned exactly
TIMEOUT_S = 0.5              # the device answers in well under 20 ms
UNIT = 1
MODEL_CODE = 0x4843
Call = Callable[[ModbusSerialClient], ModbusPDU]


@pytest.fixture
def device(sim_device: SimFactory) -> SimulatedDevice:
    return sim_device("hc-200")


@pytest.fixture
def client(device: SimulatedDevice) -> Iterator[ModbusSerialClient]:
    assert pymodbus.__version__ == PYMODBUS_VERSION
    c = ModbusSerialClient(device.port, baudrate=19200, parity="N", stopbits=1, bytesize=8,
                           timeout=TIMEOUT_S, retries=0)
    assert c.connect(), f"pymodbus could not open {device.port}"
    yield c
    c.close()  # type: ignore[no-untyped-call]  # pymodbus leaves close() untyped


def test_read_input_registers(client: ModbusSerialClient) -> None:
    rr = client.read_input_registers(0, count=10, device_id=UNIT)
    assert not rr.isError()
    assert rr.registers[9] == MODEL_CODE
    assert rr.registers[0] == 320              # idle pad at 32.0 °C
    assert rr.registers[2] & 0b10              # status: pad connected
    assert rr.registers[6] == 100              # firmware 1.00


def test_read_holding_defaults(client: ModbusSerialClient) -> None:
    rr = client.read_holding_registers(0, count=10, device_id=UNIT)
    assert not rr.isError()
    assert rr.registers == [370, 600, 0, 0, 460, 50, 0, 10000, 0, 0]


def test_write_single_and_multiple(client: ModbusSerialClient, device: SimulatedDevice) -> None:
    wr = client.write_register(0, 420, device_id=UNIT)
    assert not wr.isError() and wr.registers == [420]
    wr = client.write_registers(1, [120, 1, 5], device_id=UNIT)
    assert not wr.isError() and wr.count == 3
    rr = client.read_holding_registers(0, count=4, device_id=UNIT)
    assert rr.registers == [420, 120, 1, 5]
    rr = client.read_input_registers(2, count=3, device_id=UNIT)
    assert rr.registers[0] & 1                 # output enabled
    assert rr.registers[2] in (119, 120)       # remaining seconds
    wr = client.write_register(2, 0, device_id=UNIT)
    assert not wr.isError()
    with device.model.lock:
        assert [c.cause for c in device.model.history] == ["start", "stop"]


def test_negative_int16_round_trip(client: ModbusSerialClient) -> None:
    assert not client.write_register(8, 0xCA1B, device_id=UNIT).isError()   # calibration mode
    assert not client.write_register(6, (-250) & 0xFFFF, device_id=UNIT).isError()
    rr = client.read_holding_registers(6, count=1, device_id=UNIT)
    assert client.convert_from_registers(rr.registers, client.DATATYPE.INT16) == -250


@pytest.mark.parametrize(("call", "code"), [
    (lambda c: c.read_coils(0, count=1, device_id=UNIT), 0x01),
    (lambda c: c.read_input_registers(5, count=6, device_id=UNIT), 0x02),
    (lambda c: c.read_holding_registers(0, count=17, device_id=UNIT), 0x03),
    (lambda c: c.write_register(0, 451, device_id=UNIT), 0x03),
    (lambda c: c.write_register(7, 10100, device_id=UNIT), 0x03),     # cal_gain, not in cal mode
    (lambda c: c.write_registers(0, [400, 100, 1, 99], device_id=UNIT), 0x03),
    (lambda c: c.write_register(10, 1, device_id=UNIT), 0x02),
], ids=["read-coils", "input-past-end", "too-many", "setpoint-high", "cal-only",
        "multiple-one-bad", "holding-past-end"])
def test_exceptions_surface_as_exception_responses(
        client: ModbusSerialClient, call: Call, code: int) -> None:
    rr = call(client)
    assert rr.isError()
    assert isinstance(rr, ExceptionResponse)
    assert rr.exception_code == code
    # All or nothing: nothing above changed a setting.
    rr = client.read_holding_registers(0, count=4, device_id=UNIT)
    assert rr.registers == [370, 600, 0, 0]


def test_other_unit_gets_no_reply(client: ModbusSerialClient) -> None:
    with pytest.raises(ModbusIOException):
        client.read_input_registers(9, count=1, device_id=2)
    rr = client.read_input_registers(9, count=1, device_id=UNIT)     # still in step
    assert rr.registers == [MODEL_CODE]
