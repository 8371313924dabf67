"""Transports in memory, for testing the protocol engines without a pty.

A device here is any `Callable[[bytes], bytes]`: it gets each chunk the engine
writes and returns the bytes it answers (b"" for silence). The scripted devices
in tests.support.devices are such callables.

- ScriptedPort: answers at once, in virtual time (timeouts cost nothing).
- ScriptedPortReadSome: the same with the optional `read_some` the engines prefer.
- SlowPort: answers after a real delay, for tests that measure latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from tests.support.clock import VirtualClock

Device = Callable[[bytes], bytes]

# What a pseudo-terminal holds for a reader: read_available returns at most this.
PORT_BUFFER = 4096
# An engine that writes more than this in one test retries without bound.
MAX_WRITES = 64
# The engine modules whose `time` a ScriptedPort replaces with its VirtualClock.
ENGINE_MODULES = ("protocols.scpi", "protocols.modbus", "protocols.framed")


class ScriptedPort:
    """A Transport whose device answers each write at once, in virtual time.

    Use as a context manager: it puts its VirtualClock in place of the engines'
    `time` module, so timeouts, retries and quiet-line waits run in full without
    any waiting. `writes` holds every write; `received` is them joined, as a
    pty peer's would be; `send` delivers unsolicited bytes (events, noise).
    """

    port_name = "memory"

    def __init__(self, device: Device, max_writes: int = MAX_WRITES) -> None:
        self.device = device
        self.inbox = bytearray()
        self.writes: list[bytes] = []
        self.max_writes = max_writes
        self.read_bytes = 0
        self.clock = VirtualClock()
        self._patch = pytest.MonkeyPatch()
        self._entered = False

    def __enter__(self) -> ScriptedPort:
        fake_time = SimpleNamespace(monotonic=self.clock.monotonic, sleep=self.clock.sleep,
                                    perf_counter=self.clock.monotonic)
        for name in ENGINE_MODULES:
            self._patch.setattr(f"{name}.time", fake_time)
        self._entered = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._patch.undo()
        self._entered = False

    @property
    def received(self) -> bytes:
        return b"".join(self.writes)

    def send(self, data: bytes) -> None:
        self.inbox += data

    def write(self, data: bytes) -> None:
        assert self._entered, "use ScriptedPort in a `with` block: it runs the engine's clock"
        self.writes.append(data)
        assert len(self.writes) <= self.max_writes, "engine keeps writing: unbounded retries"
        self.inbox += self.device(data)

    def read(self, n: int, deadline: float) -> bytes:
        out = self._take(n)
        if len(out) < n:
            self.clock.wait_until(deadline)
        return out

    def read_available(self) -> bytes:
        """At most a pty's buffer at a time, as `in_waiting` would report."""
        return self._take(PORT_BUFFER)

    def discard_input(self) -> None:
        self.inbox.clear()

    def close(self) -> None:
        pass

    def _take(self, n: int) -> bytes:
        out = bytes(self.inbox[:n])
        del self.inbox[:n]
        self.read_bytes += len(out)
        return out


class ScriptedPortReadSome(ScriptedPort):
    """With the optional `read_some` the engines prefer: one call per arrival."""

    def read_some(self, n: int, deadline: float) -> bytes:
        if not self.inbox:
            self.clock.wait_until(deadline)
            return b""
        # What arrives together: a reply and whatever follows it, in pieces.
        return self._take(min(n, len(self.inbox), 1 + len(self.inbox) // 2))


# How long SlowPort.read sleeps at most between looks at its pending replies.
SLOW_PORT_POLL_S = 0.002


class SlowPort:
    """A Transport in memory whose device answers each write after `delay` real seconds.

    `on_write(n)` runs after the n-th write (1-based): tests raise a stop there,
    i.e. while that exchange is on the wire.
    """

    port_name = "memory"

    def __init__(self, device: Device, delay: float = 0.0,
                 on_write: Callable[[int], None] | None = None) -> None:
        self.device, self.delay, self.on_write = device, delay, on_write
        self.writes: list[bytes] = []
        self.inbox = bytearray()
        self._pending: list[tuple[float, bytes]] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        reply = self.device(data)
        if reply:
            self._pending.append((time.monotonic() + self.delay, reply))
        if self.on_write is not None:
            self.on_write(len(self.writes))

    def _arrive(self) -> None:
        now = time.monotonic()
        while self._pending and self._pending[0][0] <= now:
            self.inbox += self._pending.pop(0)[1]

    def read(self, n: int, deadline: float) -> bytes:
        while True:
            self._arrive()
            now = time.monotonic()
            if len(self.inbox) >= n or now >= deadline:
                out = bytes(self.inbox[:n])
                del self.inbox[:n]
                return out
            wake = min([deadline] + [t for t, _ in self._pending[:1]])
            time.sleep(max(0.0, min(wake - now, SLOW_PORT_POLL_S)))

    def read_available(self) -> bytes:
        self._arrive()
        out = bytes(self.inbox)
        self.inbox.clear()
        return out

    def discard_input(self) -> None:
        self._arrive()
        self.inbox.clear()

    def close(self) -> None:
        pass
