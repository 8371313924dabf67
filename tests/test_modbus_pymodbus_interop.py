"""Interoperability: the engine against pymodbus 3.16.1's RTU serial server.

pymodbus is an independent Modbus implementation; agreeing with it on the wire
is evidence the codec follows the standard and not just our own reading of it.
The server runs on its own asyncio loop in a background thread (it must be
created inside a running loop). Both sides open a named port, so two pty pairs
are bridged by a pump thread.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import tty
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pymodbus
import pytest
from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from controller.profiles.loader import resolve_profile
from protocols.errors import DeviceRefused
from protocols.map_modbus import ModbusMap
from protocols.modbus import ModbusEngine
from protocols.transport import SerialSettings, SerialTransport

PYMODBUS_VERSION = "3.16.1"  # its API breaks between minor releases: pinned exactly
PUMP_POLL_S = 0.01
START_TIMEOUT_S = 5.0
REPLY_TIMEOUT_S = 0.5  # pymodbus answers in a few ms; generous against a loaded CI box
UNIT = 1

# HC-200 layout: input registers 0..9, holding registers 0..9 (power-up defaults).
INPUTS = [372, 0xFFE7, 0x0003, 120, 480, 0, 102, 0x0001, 0xE240, 0x4843]
HOLDINGS = [370, 600, 0, 0, 460, 50, 0, 10000, 0, 0]


@contextmanager
def bridged_ptys() -> Iterator[tuple[str, str]]:
    """Two pty slave paths; bytes written to one come out of the other."""
    fds = [os.openpty(), os.openpty()]
    for _, slave in fds:
        tty.setraw(slave)  # a fresh pty echoes and translates CR/LF
    masters = [fds[0][0], fds[1][0]]
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            ready, _, _ = select.select(masters, [], [], PUMP_POLL_S)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                    os.write(masters[1] if fd == masters[0] else masters[0], data)
                except OSError:
                    return

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        # Our slave fds stay open, so neither master reads EIO while a side reopens.
        yield os.ttyname(fds[0][1]), os.ttyname(fds[1][1])
    finally:
        stop.set()
        thread.join(1.0)
        for pair in fds:
            for fd in pair:
                with suppress(OSError):
                    os.close(fd)


class PymodbusServer:
    """ModbusSerialServer on its own event loop thread."""

    def __init__(self, port: str) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.server: ModbusSerialServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._error is not None:
            self.stop()
            raise RuntimeError(f"pymodbus server did not start: {self._error!r}")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        try:
            # 3.16 deprecates ModbusDeviceContext/ModbusServerContext (whose blocks are
            # 1-based) for SimDevice/SimData (0-based, as on the wire). The tuple form
            # keeps input and holding registers apart, as the HC-200 has them.
            no_bits = SimData(0, values=False, datatype=DataType.BITS)
            device = SimDevice(id=UNIT, simdata=(
                [no_bits], [no_bits],
                [SimData(0, values=list(HOLDINGS), datatype=DataType.REGISTERS)],
                [SimData(0, values=list(INPUTS), datatype=DataType.REGISTERS)]))
            self.server = ModbusSerialServer(device, framer=FramerType.RTU, port=self.port,
                                             baudrate=19200)
            await self.server.serve_forever(background=True)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self._ready.set()
        await self.server.serving

    def registers(self, function: int, address: int, count: int) -> list[int]:
        """The server's own view of its registers (3 = holding, 4 = input)."""
        assert self.server is not None
        future = asyncio.run_coroutine_threadsafe(
            self.server.async_getValues(UNIT, function, address, count), self.loop)
        return [int(v) for v in future.result(START_TIMEOUT_S)]

    def stop(self) -> None:
        if self.server is not None and self.loop.is_running():
            future = asyncio.run_coroutine_threadsafe(
                self.server.shutdown(), self.loop)  # type: ignore[no-untyped-call]
            with suppress(Exception):
                future.result(START_TIMEOUT_S)
        self._thread.join(START_TIMEOUT_S)

    @property
    def stopped(self) -> bool:
        return not self._thread.is_alive()


@pytest.fixture(scope="module")
def hc_map() -> ModbusMap:
    protocol = resolve_profile("hc-200").profile.protocol
    assert isinstance(protocol, ModbusMap)
    return protocol


@pytest.fixture(scope="module")
def link() -> Iterator[tuple[str, PymodbusServer]]:
    """(client port, server): one server for the module, always shut down."""
    with bridged_ptys() as (server_port, client_port):
        server = PymodbusServer(server_port)
        server.start()
        try:
            yield client_port, server
        finally:
            server.stop()
    assert server.stopped, "pymodbus server thread did not stop"


@contextmanager
def engine_on(port: str, pmap: ModbusMap, retries: int = 3) -> Iterator[ModbusEngine]:
    engine = ModbusEngine(SerialTransport(port, SerialSettings(baudrate=19200)), pmap,
                          REPLY_TIMEOUT_S, retries)
    try:
        yield engine
    finally:
        engine.close()


def test_pinned_version() -> None:
    assert pymodbus.__version__ == PYMODBUS_VERSION


def test_reads_match_the_server(link: tuple[str, PymodbusServer], hc_map: ModbusMap) -> None:
    with engine_on(link[0], hc_map) as engine:
        values = engine.read(["pad_temp", "drive", "status", "elapsed", "remaining",
                              "fault_code", "firmware", "serial_hi", "serial_lo", "model"])
        holding = engine.read(["setpoint", "run_time", "output_enable", "watchdog",
                               "trip_high", "trip_low", "cal_offset", "cal_gain", "cal_mode",
                               "fault_reset"])
    assert values["pad_temp"] == 37.2
    assert values["drive"] == -25
    assert values["status.output_enabled"] is True
    assert values["status.pad_connected"] is True
    assert values["status.sensor_fault"] is False
    assert (values["elapsed"], values["remaining"], values["model"]) == (120, 480, 0x4843)
    assert holding == {"setpoint": 37.0, "run_time": 600, "output_enable": 0, "watchdog": 0,
                       "trip_high": 46.0, "trip_low": 5.0, "cal_offset": 0, "cal_gain": 1.0,
                       "cal_mode": 0, "fault_reset": 0}


def test_writes_reach_the_server(link: tuple[str, PymodbusServer], hc_map: ModbusMap) -> None:
    port, server = link
    with engine_on(port, hc_map) as engine:
        try:
            check_writes(engine, server)
        finally:  # the server outlives this test: put back its power-up values
            engine.write_many({"setpoint": 37.0, "run_time": 600, "output_enable": 0,
                               "watchdog": 0})
            engine.write("cal_offset", {"value": 0})
    assert server.registers(3, 0, 10) == HOLDINGS


def check_writes(engine: ModbusEngine, server: PymodbusServer) -> None:
    engine.write("setpoint", {"value": 41.5})
    engine.write("cal_offset", {"value": -2.5})
    engine.write_many({"run_time": 900, "output_enable": 1, "watchdog": 2})
    assert server.registers(3, 0, 4) == [415, 900, 1, 2]
    assert server.registers(3, 6, 1) == [(-250) & 0xFFFF]
    assert engine.read(["setpoint", "cal_offset", "run_time", "output_enable", "watchdog"]) == {
        "setpoint": 41.5, "cal_offset": -2.5, "run_time": 900, "output_enable": 1,
        "watchdog": 2}


def test_server_exception_maps_to_device_refused(link: tuple[str, PymodbusServer],
                                                 hc_map: ModbusMap) -> None:
    data = hc_map.model_dump()
    data["input_registers"]["beyond"] = {"address": 10, "type": "uint16"}  # not served
    with engine_on(link[0], ModbusMap.model_validate(data), retries=0) as engine:
        with pytest.raises(DeviceRefused) as info:
            engine.read(["model", "beyond"])
        assert (info.value.entry, info.value.code) == ("model,beyond", 2)
        assert engine.read(["model"]) == {"model": 0x4843}  # the link is still in step
