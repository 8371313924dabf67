"""Issue 10 item 7: a reply the ES-4 remembered from an earlier host is never taken as current.

The ES-4 keeps the SEQ and reply of the last request across host disconnects
and answers a request under that SEQ with the remembered reply, unexecuted.
The engine opens every link with a PING whose reply it throws away; from then
on each request's SEQ differs from the one before, so the device executes it.
"""

from __future__ import annotations

import pytest

from controller.profiles.loader import resolve_profile
from protocols.framed import FramedEngine
from protocols.map_framed import FramedMap
from protocols.transport import SerialSettings, SerialTransport
from simulator.framed_device import FramedEndpoint
from simulator.server import SimulatedDevice
from tests.support.devices import (
    GET_INFO,
    GET_STATUS,
    INFO_PAYLOAD,
    PING,
    STATUS_PAYLOAD,
    ScriptedDevice,
    es4_event,
    ref_frame,
)
from tests.support.ports import ScriptedPort

ES4 = resolve_profile("es-4").profile
assert isinstance(ES4.protocol, FramedMap)
ES4_MAP: FramedMap = ES4.protocol
TIMEOUT_S = 0.2
REPLY = 0x80
# An earlier host's GET_INFO reply: another serial number than the device reports now.
OLD_INFO = b"ES-4\0\0\0\0" + (1111).to_bytes(4, "little") + bytes([1, 0, 2])
# An earlier host's GET_STATUS reply: everything idle, while channel 0 now runs.
OLD_STATUS = bytes(19)


def remembering(seq: int, cmd: int, old_payload: bytes) -> ScriptedDevice:
    """A device whose last request, from an earlier host, was `cmd` under `seq`."""
    device = ScriptedDevice()
    device.remembered = (seq, ref_frame(seq, cmd + REPLY, b"\x00" + old_payload))
    return device


@pytest.mark.parametrize(("cmd", "entry", "old", "key", "current"), [
    (GET_INFO, "get_info", OLD_INFO, "get_info.serial", 4242),
    (GET_STATUS, "get_status", OLD_STATUS, "get_status.ch0_state", 2),
], ids=["get_info", "get_status"])
def test_a_remembered_reply_under_our_first_seq_is_discarded(
        cmd: int, entry: str, old: bytes, key: str, current: int) -> None:
    # The case: the new host's first request happens to use the remembered SEQ.
    assert STATUS_PAYLOAD[1] == 2 and INFO_PAYLOAD[8:12] == (4242).to_bytes(4, "little")
    device = remembering(77, cmd, old)
    with ScriptedPort(device) as port:
        result = FramedEngine(port, ES4_MAP, TIMEOUT_S, 2, first_seq=77).read([entry])
    assert result[key] == current       # the stale reply would say 1111 / idle
    # Byte for byte: a PING under 77 (answered from memory, thrown away), then ours
    # under 78, which the device executes.
    assert port.writes == [bytes.fromhex("a5 02 4d 01") + ref_frame(77, PING)[4:],
                           ref_frame(78, cmd)]
    assert [(seq, c) for seq, c, _ in device.executed] == [(78, cmd)]


@pytest.mark.parametrize("first_seq", [1, 76, 77, 255])
def test_every_reply_after_the_opening_ping_is_executed(first_seq: int) -> None:
    # Whatever SEQ the device remembers relative to ours (the same, the next, any
    # other), every request after the opening PING is executed, never replayed.
    device = remembering(77, GET_INFO, OLD_INFO)
    with ScriptedPort(device) as port:
        engine = FramedEngine(port, ES4_MAP, TIMEOUT_S, 2, first_seq=first_seq)
        for _ in range(3):
            assert engine.read(["get_info"])["get_info.serial"] == 4242
    executed = [(seq, c) for seq, c, _ in device.executed]
    assert [c for _, c in executed][-3:] == [GET_INFO] * 3
    assert len(device.requests) == 4      # the PING and three GET_INFO, no resends


def test_frames_waiting_at_open_are_not_taken_for_replies() -> None:
    # A reply already in the port's buffer (an earlier host's, under the SEQ our
    # first GET_INFO will carry) is dropped; an event waiting there is delivered.
    device = ScriptedDevice()
    events: list[str] = []
    with ScriptedPort(device) as port:
        port.send(ref_frame(78, GET_INFO + REPLY, b"\x00" + OLD_INFO) + es4_event(1, 0, 12000))
        engine = FramedEngine(port, ES4_MAP, TIMEOUT_S, 2, first_seq=77)
        engine.set_event_handler(lambda ev: events.append(ev.kind))
        assert engine.read(["get_info"])["get_info.serial"] == 4242
    assert events == ["lead_off"]
    assert port.writes == [ref_frame(77, PING), ref_frame(78, GET_INFO)]


def test_the_opening_ping_needs_a_harmless_command_in_the_map() -> None:
    device = ScriptedDevice()
    with pytest.raises(ValueError, match="no 'hello' command"):
        FramedEngine(ScriptedPort(device), ES4_MAP, TIMEOUT_S, 2, sync_command="hello")
    with pytest.raises(ValueError, match="no 'configure' command without request fields"):
        FramedEngine(ScriptedPort(device), ES4_MAP, TIMEOUT_S, 2, sync_command="configure")


def test_a_silent_device_fails_the_opening_with_the_callers_entry_named() -> None:
    device = ScriptedDevice()
    device.silent = True
    with ScriptedPort(device) as port, \
            pytest.raises(Exception, match=r"no reply from the device on .* "
                                           r"after 2 attempts"):
        FramedEngine(port, ES4_MAP, 0.02, 1, first_seq=5).read(["get_info"])
    assert port.writes == [ref_frame(5, PING)] * 2   # resent unchanged, nothing else sent


def test_simulated_es4_remembering_an_earlier_hosts_get_info() -> None:
    # On a real pty against the simulator, which keeps the remembered SEQ across hosts.
    settings = SerialSettings(baudrate=115200)
    with SimulatedDevice(ES4) as sim:
        endpoint = sim.endpoint
        assert isinstance(endpoint, FramedEndpoint)
        first = FramedEngine(SerialTransport(sim.port, settings), ES4_MAP, 0.5, 2,
                             first_seq=40)
        assert first.read(["get_info"])["get_info.model"] == "ES-4"   # GET_INFO under 41
        first.close()
        executed, duplicates = endpoint.executed, endpoint.duplicates
        second = FramedEngine(SerialTransport(sim.port, settings), ES4_MAP, 0.5, 2,
                              first_seq=41)
        assert second.read(["get_info"])["get_info.model"] == "ES-4"
        second.close()
        # The PING under 41 was answered from memory; the GET_INFO (42) was executed.
        assert endpoint.duplicates == duplicates + 1
        assert endpoint.executed == executed + 1


def test_a_framed_profile_names_a_harmless_command_to_open_with() -> None:
    """Validation, not an internal error at the first session: the map must hold a
    request-less command for the opening exchange (`open_with`, default `ping`)."""
    from pydantic import ValidationError

    from protocols.map_framed import FramedMap

    data = ES4_MAP.model_dump()
    del data["commands"]["ping"]
    with pytest.raises(ValidationError, match="open_with: the map needs a command 'ping'"):
        FramedMap.model_validate(data)
    data["open_with"] = "get_status"
    assert FramedMap.model_validate(data).open_with == "get_status"
    data["open_with"] = "configure"
    with pytest.raises(ValidationError, match="'configure' with no request fields"):
        FramedMap.model_validate(data)
