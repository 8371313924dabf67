"""Issue 10 item 6: one controller per port, on real pseudo-terminals.

SerialTransport locks the device node (flock) before pyserial opens it: a second
opener gets PortBusy naming the holder, having written nothing and changed no
setting, however it spells the path.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from protocols.errors import LinkLost, PortBusy, ProtocolError
from protocols.transport import SerialSettings, SerialTransport
from tests.pty_peer import pty_peer

SETTINGS = SerialSettings(baudrate=115200)
OTHER_SETTINGS = SerialSettings(baudrate=9600)   # what a second profile might use
HOLDER_SCRIPT = """\
import sys, time
from protocols.transport import SerialSettings, SerialTransport
t = SerialTransport(sys.argv[1], SerialSettings(baudrate=115200))
print("holding", flush=True)
time.sleep(60)
"""


def test_a_second_opener_is_refused_before_anything_is_sent() -> None:
    with pty_peer(lambda data: data) as peer:
        first = SerialTransport(peer.port, SETTINGS)
        speed = termios.tcgetattr(peer.slave)[4]
        with pytest.raises(PortBusy) as info:
            SerialTransport(peer.port, OTHER_SETTINGS)
        message = str(info.value)
        assert message.startswith(f"port {peer.port} is in use by another controller "
                                  f"(pid {os.getpid()}: ")
        assert message.endswith("); one controller per device")
        assert isinstance(info.value, ProtocolError)   # the session rejects it at open
        # Nothing written, and the holder's line settings untouched (9600 not applied).
        time.sleep(0.05)
        assert peer.received == b""
        assert termios.tcgetattr(peer.slave)[4] == speed == termios.B115200
        first.write(b"still mine\n")                    # the holder's link still works
        assert first.read(11, time.monotonic() + 1.0) == b"still mine\n"
        first.close()
        # Once the holder closes, the next controller opens.
        second = SerialTransport(peer.port, SETTINGS)
        second.close()
        third = SerialTransport(peer.port, SETTINGS)     # close released it again
        third.close()


def test_every_spelling_of_the_same_device_collides(tmp_path: Path) -> None:
    with pty_peer(lambda data: b"") as peer:
        directory, name = os.path.split(peer.port)
        link = tmp_path / "usb-Vendor_ES-4_0042-if00-port0"   # like /dev/serial/by-id
        link.symlink_to(peer.port)
        spellings = [f"{directory}//{name}", f"{directory}/./{name}", str(link),
                     f"{directory}/../{os.path.basename(directory)}/{name}"]
        for holder_path in [peer.port, *spellings]:
            holder = SerialTransport(holder_path, SETTINGS)
            for other in [peer.port, *spellings]:
                with pytest.raises(PortBusy, match="in use by another controller") as info:
                    SerialTransport(other, SETTINGS)
                if other != peer.port:
                    assert f"port {other} ({peer.port}) is in use" in str(info.value)
            holder.close()


def test_a_killed_holder_releases_the_port() -> None:
    with pty_peer(lambda data: b"") as peer:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, peer.port],
                                stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[1])
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "holding\n"
            with pytest.raises(PortBusy) as info:
                SerialTransport(peer.port, SETTINGS)
            # The holder is named with its pid and command line.
            assert f"(pid {proc.pid}: {sys.executable} -c import sys, time" in str(info.value)
            proc.kill()                                   # SIGKILL: no cleanup runs
            proc.wait(5)
            t = SerialTransport(peer.port, SETTINGS)     # the kernel dropped the lock
            t.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_urls_are_not_locked_and_missing_ports_stay_link_lost() -> None:
    # pyserial URLs have no device node: the lock does not apply (docs/protocols.md).
    a = SerialTransport("loop://", SETTINGS)
    b = SerialTransport("loop://", SETTINGS)
    a.close()
    b.close()
    with pytest.raises(LinkLost, match="cannot open /dev/does-not-exist"):
        SerialTransport("/dev/does-not-exist", SETTINGS)


def test_a_transport_dropped_without_close_releases_the_lock() -> None:
    with pty_peer(lambda data: b"") as peer:
        leaked = SerialTransport(peer.port, SETTINGS)
        with pytest.raises(PortBusy):
            SerialTransport(peer.port, SETTINGS)
        del leaked
        gc.collect()
        SerialTransport(peer.port, SETTINGS).close()
