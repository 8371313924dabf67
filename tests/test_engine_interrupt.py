"""Issue 10 item 1 (engine part): a stop request overtakes routine I/O.

engine.set_interrupt(check): every exchange but the first of a read()/write()
call, and every retry, is preceded by check(); True raises Interrupted with
nothing more sent. So a stop waits at most for the one exchange on the wire.
The ports here are in memory with real (optionally slow) reply times.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from controller.profiles.loader import resolve_profile
from protocols.errors import Interrupted, LinkTimeout, ProtocolError
from protocols.framed import FramedEngine
from protocols.map_framed import FramedMap
from protocols.map_modbus import ModbusMap
from protocols.map_scpi import ScpiMap
from protocols.modbus import ModbusEngine
from protocols.scpi import SETTLE_QUIET_TIMEOUTS, ScpiEngine
from tests.support.devices import (
    GET_INFO,
    GET_STATUS,
    HC_HOLDINGS,
    HC_INPUTS,
    PING,
    TELEMETRY,
    FakeUs300,
    ScriptedDevice,
    Slave,
    adu,
    ref_frame,
    req,
)
from tests.support.ports import SlowPort
from tests.test_framed_engine import small_map

Device = Callable[[bytes], bytes]


def _maps() -> tuple[ScpiMap, ModbusMap, FramedMap]:
    us, hc, es = (resolve_profile(p).profile.protocol for p in ("us-300", "hc-200", "es-4"))
    assert isinstance(us, ScpiMap) and isinstance(hc, ModbusMap) and isinstance(es, FramedMap)
    return us, hc, es


US300, HC200, ES4 = _maps()
SMALL = small_map(1, 3, event_seq=2)   # request SEQs 1 and 3 only
# US-300 queries its fake answers; read_telemetry is five queries too.
FIVE_QUERIES = ["frequency", "intensity", "output", "status", "idn"]
HC_READ = [*TELEMETRY, "setpoint", "output_enable"]   # three requests: inputs 0-5, holding 0, 2
# Scheduling noise allowed on top of one reply time in the latency bounds.
SLACK_S = 0.03


class Check:
    """An interrupt check that counts its calls; `stop` is the session's stop event."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.stop.is_set()

    def stop_at_write(self, k: int) -> Callable[[int], None]:
        return lambda n: self.stop.set() if n == k else None


def hc_slave() -> Slave:
    return Slave(1, HC_INPUTS, HC_HOLDINGS)


def opened_framed(device: ScriptedDevice, port: SlowPort, retries: int = 2,
                  timeout: float = 0.2) -> FramedEngine:
    engine = FramedEngine(port, ES4, timeout, retries, first_seq=9)
    engine.open_link()                       # the opening PING under 9
    assert port.writes == [ref_frame(9, PING)]
    port.writes.clear()
    device.requests.clear()
    return engine


# -- interrupted between the exchanges of one call ---------------------------------------------

def test_scpi_five_entry_read_stops_after_the_line_on_the_wire() -> None:
    check = Check()
    port = SlowPort(FakeUs300(), on_write=check.stop_at_write(1))
    engine = ScpiEngine(port, US300, 0.2, 2)
    engine.set_interrupt(check)
    with pytest.raises(Interrupted, match="intensity: a stop request came first") as info:
        engine.read(FIVE_QUERIES)
    assert isinstance(info.value, ProtocolError)
    assert port.writes == [req("SOURce:FREQuency?")]      # exactly one request line
    assert check.calls == 1
    # Cleared (as the session does before its stop commands): the stop goes out.
    engine.set_interrupt(None)
    engine.write("abort", {})
    assert port.writes[1:] == [req("ABORt")]


def test_modbus_split_read_stops_between_its_requests() -> None:
    check = Check()
    port = SlowPort(hc_slave(), on_write=check.stop_at_write(1))
    engine = ModbusEngine(port, HC200, 0.2, 2)
    engine.set_interrupt(check)
    with pytest.raises(Interrupted, match="modbus setpoint: a stop request came first"):
        engine.read(HC_READ)
    assert port.writes == [adu("01 04 0000 0006")]       # the input run only
    check.stop.clear()
    assert set(engine.read(HC_READ)) >= set(HC_READ)       # next poll: all three requests
    assert port.writes[1:] == [adu("01 04 0000 0006"), adu("01 03 0000 0001"),
                               adu("01 03 0002 0001")]


def test_framed_multi_command_read_stops_after_the_frame_on_the_wire() -> None:
    check = Check()
    device = ScriptedDevice()
    port = SlowPort(device)
    engine = opened_framed(device, port)
    port.on_write = check.stop_at_write(1)
    engine.set_interrupt(check)
    with pytest.raises(Interrupted, match="get_info: a stop request came first"):
        engine.read(["get_status", "get_info"])
    assert port.writes == [ref_frame(10, GET_STATUS)]
    assert check.calls == 1


def test_framed_opening_ping_is_the_first_exchange_of_the_first_call() -> None:
    check = Check()
    check.stop.set()                       # already pending: one exchange still goes out
    port = SlowPort(ScriptedDevice())
    engine = FramedEngine(port, ES4, 0.2, 2, first_seq=9)
    engine.set_interrupt(check)
    with pytest.raises(Interrupted):
        engine.read(["get_info"])
    assert port.writes == [ref_frame(9, PING)]
    engine.set_interrupt(None)
    assert engine.read(["get_info"])["get_info.serial"] == 4242
    # The link stays opened (no second PING), and the interrupted call took no SEQ.
    assert port.writes[1:] == [ref_frame(10, GET_INFO)]


# -- retries are not attempted ----------------------------------------------------------------

def test_scpi_retry_after_a_timeout_is_not_attempted() -> None:
    check = Check()
    fake = FakeUs300()
    fake.silent = True
    port = SlowPort(fake, on_write=check.stop_at_write(1))
    engine = ScpiEngine(port, US300, 0.05, 3)
    engine.set_interrupt(check)
    start = time.monotonic()
    with pytest.raises(Interrupted):
        engine.read(["frequency"])
    assert port.writes == [req("SOURce:FREQuency?")]
    assert time.monotonic() - start < 0.05 + SLACK_S      # one timeout, no settle, no retry


def test_modbus_retry_after_a_timeout_is_not_attempted() -> None:
    check = Check()
    slave = hc_slave()
    slave.silent = True
    port = SlowPort(slave, on_write=check.stop_at_write(1))
    engine = ModbusEngine(port, HC200, 0.05, 3)
    engine.set_interrupt(check)
    with pytest.raises(Interrupted):
        engine.write("setpoint", {"value": 38.0})
    assert port.writes == [adu("01 06 0000 017C")]


def test_framed_retry_after_a_timeout_is_not_attempted() -> None:
    check = Check()
    device = ScriptedDevice()
    port = SlowPort(device)
    engine = opened_framed(device, port, retries=3, timeout=0.05)
    device.silent = True
    port.on_write = check.stop_at_write(1)
    engine.set_interrupt(check)
    with pytest.raises(Interrupted, match="get_status"):
        engine.read(["get_status"])
    assert port.writes == [ref_frame(10, GET_STATUS)]
    # The next request takes a new SEQ: a late reply to seq 10 cannot pass for its own.
    device.silent = False
    engine.set_interrupt(None)
    engine.write("estop", {})
    assert port.writes[1:] == [ref_frame(11, 0x1F)]


def test_framed_interrupt_takes_no_seq() -> None:
    # With two request SEQs (1 and 3), a SEQ taken but not sent would make the next
    # request repeat the last one sent, and the device would replay its reply.
    check = Check()
    device = ScriptedDevice()
    port = SlowPort(device)
    engine = FramedEngine(port, SMALL, 0.2, 2, first_seq=1)
    engine.set_interrupt(check)
    engine.write("ping", {})                     # opening PING 1, then PING 3
    check.stop.set()
    with pytest.raises(Interrupted):
        engine.read(["ping", "ping"])             # PING 1 goes, the second does not
    engine.set_interrupt(None)
    engine.write("ping", {})
    assert [f[2] for f in port.writes] == [1, 3, 1, 3]
    assert [seq for seq, _, _ in device.executed] == [1, 3, 1, 3]


# -- when the check is (not) called -----------------------------------------------------------

def test_the_check_is_never_called_before_the_first_exchange() -> None:
    check = Check()
    scpi = ScpiEngine(SlowPort(FakeUs300()), US300, 0.2, 2)
    modbus = ModbusEngine(SlowPort(hc_slave()), HC200, 0.2, 2)
    device = ScriptedDevice()
    framed = opened_framed(device, SlowPort(device))
    for engine in (scpi, modbus, framed):
        engine.set_interrupt(check)
    scpi.write("abort", {})
    modbus.write("setpoint", {"value": 38.0})
    framed.write("ping", {})
    framed.read(["get_status"])
    assert check.calls == 0                 # single-exchange calls: never asked
    scpi.read(FIVE_QUERIES)
    assert check.calls == 4                 # before exchanges 2..5
    modbus.read(HC_READ)
    assert check.calls == 4 + 2
    framed.read(["get_status", "get_info", "get_status"])
    assert check.calls == 4 + 2 + 2


@pytest.mark.parametrize("family", ["modbus", "framed"])
def test_the_check_is_called_before_every_retry(family: str) -> None:
    check = Check()
    engine: ModbusEngine | FramedEngine
    if family == "modbus":
        slave = hc_slave()
        slave.silent = True
        engine = ModbusEngine(SlowPort(slave), HC200, 0.02, 2)
    else:
        device = ScriptedDevice()
        engine = opened_framed(device, SlowPort(device), retries=2, timeout=0.02)
        device.silent = True
    engine.set_interrupt(check)
    with pytest.raises(LinkTimeout):
        engine.read(["setpoint"] if family == "modbus" else ["get_status"])
    assert check.calls == 2


def test_no_check_means_unchanged_behaviour() -> None:
    fake = FakeUs300()
    port = SlowPort(fake)
    engine = ScpiEngine(port, US300, 0.2, 2)
    engine.set_interrupt(lambda: True)
    engine.set_interrupt(None)
    assert len(engine.read(FIVE_QUERIES)) >= 5
    assert len(port.writes) == 5


# -- SCPI: the settle after a timeout gives way, and stays safe --------------------------------

def test_scpi_settle_gives_way_and_the_stop_still_cannot_take_a_late_reply() -> None:
    timeout = 0.1
    fake = FakeUs300()
    late = SlowPort(fake, delay=1.5 * timeout)   # every answer comes after the timeout
    engine = ScpiEngine(late, US300, timeout, 1)
    stop = threading.Event()
    engine.set_interrupt(stop.is_set)
    threading.Timer(1.2 * timeout, stop.set).start()   # during the retry's settle
    start = time.monotonic()
    with pytest.raises(Interrupted, match="while the line settled"):
        engine.write("intensity", {"value": 1.0})
    waited = time.monotonic() - start
    # Gave way at once, not after the full quiet of 2 timeouts (+ the 1st timeout).
    assert waited < 1.2 * timeout + SLACK_S
    assert late.writes == [req("SOURce:INTensity 1.0")]
    # The late "OK" to that write arrives now (1.5 timeouts). The stop command, whose
    # own answer never comes, must time out, not take that "OK" for its own.
    fake.silent = True
    engine.set_interrupt(None)
    start = time.monotonic()
    with pytest.raises(LinkTimeout, match="no reply from the device"):
        engine.write("abort", {})
    # The stop went out only once the line had been quiet for the rest of the settle.
    assert time.monotonic() - start >= SETTLE_QUIET_TIMEOUTS * timeout - 0.5 * timeout
    assert late.writes[1] == req("ABORt")


# -- latency: bounded by the one exchange on the wire --------------------------------------------

@pytest.mark.parametrize(("family", "reply_s"), [
    ("scpi", 0.045),     # US-300 manual: replies within 50 ms
    ("modbus", 0.045),
    ("framed", 0.045),
])
def test_stop_to_interrupted_is_bounded_by_one_reply(family: str, reply_s: float) -> None:
    worst = 0.0
    for stop_after_s in (0.01, 0.03, 0.05, 0.07):   # before the last exchange starts
        stop = threading.Event()
        raised_at: list[float] = []
        engine: ScpiEngine | ModbusEngine | FramedEngine
        if family == "scpi":
            engine = ScpiEngine(SlowPort(FakeUs300(), reply_s), US300, 0.2, 2)
            entries = FIVE_QUERIES
        elif family == "modbus":
            engine = ModbusEngine(SlowPort(hc_slave(), reply_s), HC200, 0.2, 2)
            entries = HC_READ
        else:
            device = ScriptedDevice()
            engine = opened_framed(device, SlowPort(device, reply_s))
            entries = ["get_status", "get_info", "get_status", "get_info", "get_status"]
        engine.set_interrupt(stop.is_set)
        set_at: list[float] = []

        def raise_stop(stop: threading.Event = stop, set_at: list[float] = set_at) -> None:
            set_at.append(time.monotonic())
            stop.set()

        timer = threading.Timer(stop_after_s, raise_stop)
        timer.start()
        with pytest.raises(Interrupted):
            engine.read(entries)
        raised_at.append(time.monotonic())
        timer.join()
        latency = raised_at[0] - set_at[0]
        worst = max(worst, latency)
        assert latency <= reply_s + SLACK_S, f"{family}: {latency * 1e3:.1f} ms"
    print(f"{family}: worst stop-to-Interrupted {worst * 1e3:.1f} ms with {reply_s * 1e3:g} ms "
          "replies")
