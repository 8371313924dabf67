"""The serial transport over a real pseudo-terminal."""

from __future__ import annotations

import time

import pytest

from protocols.errors import LinkLost
from protocols.transport import SerialSettings, SerialTransport
from tests.pty_peer import pty_peer

SETTINGS = SerialSettings(baudrate=115200)


def test_round_trip_and_deadline() -> None:
    with pty_peer(lambda data: data.upper()) as peer:
        t = SerialTransport(peer.port, SETTINGS)
        t.write(b"ping\n")
        assert t.read(5, time.monotonic() + 1.0) == b"PING\n"
        start = time.monotonic()
        assert t.read(1, start + 0.1) == b""
        assert 0.09 <= time.monotonic() - start < 0.3
        t.close()


def test_missing_port_is_link_lost() -> None:
    with pytest.raises(LinkLost, match="cannot open"):
        SerialTransport("/dev/does-not-exist", SETTINGS)


def test_peer_gone_is_link_lost_not_a_hang() -> None:
    with pty_peer(lambda data: b"") as peer:
        t = SerialTransport(peer.port, SETTINGS)
        peer.close()
        start = time.monotonic()
        with pytest.raises(LinkLost):
            t.write(b"x" * 10)
            t.read(1, time.monotonic() + 1.0)
        assert time.monotonic() - start < 1.0
        t.close()


def _wait_until_waiting(t: SerialTransport, n: int) -> None:
    give_up = time.monotonic() + 2.0
    while t._port.in_waiting < n and time.monotonic() < give_up:
        time.sleep(0.001)
    assert t._port.in_waiting == n


def test_a_reply_waiting_past_the_deadline_is_still_read() -> None:
    # A thread scheduled only after its deadline (busy machine) must not call a reply
    # that has arrived "silence": that would retry an exchange that succeeded.
    reply = bytes(range(17))
    with pty_peer(lambda data: reply) as peer:
        t = SerialTransport(peer.port, SETTINGS)
        for read in (t.read, t.read_some):
            t.write(b"?")
            _wait_until_waiting(t, 17)
            assert read(17, time.monotonic() - 1.0) == reply
        t.write(b"?")
        _wait_until_waiting(t, 17)
        assert t.read(5, time.monotonic() - 1.0) == reply[:5]   # never more than asked
        assert t.read_some(100, time.monotonic() - 1.0) == reply[5:]
        start = time.monotonic()
        assert t.read(1, start - 1.0) == b"" and t.read_some(1, start - 1.0) == b""
        assert time.monotonic() - start < 0.05   # and nothing waits when nothing is there
        t.close()
