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
