"""Serve one simulated device on a real pseudo-terminal.

The server owns the master side; hosts open the slave path (`/dev/pts/N`) with
pyserial exactly as they would open a USB adapter. One thread reads requests,
lets the endpoint answer, advances the model every tick and injects link
faults (silence, disconnect, garbling, delay).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import select
import threading
import time
import tty

from simulator.endpoint import Endpoint
from simulator.faults import FaultPlan
from simulator.model_base import Clock

log = logging.getLogger(__name__)

# The model advances at least this often while the line is quiet: it bounds how
# late the device's own timer and watchdog act (a real device runs them in firmware).
TICK_S = 0.002
READ_CHUNK = 4096


class PtyServer:
    def __init__(self, endpoint: Endpoint, faults: FaultPlan, clock: Clock = time.monotonic,
                 ) -> None:
        self.endpoint = endpoint
        self.faults = faults
        self.clock = clock
        self._master, self._slave = os.openpty()
        # A fresh pty echoes and translates CR/LF: raw at once, before any host opens it.
        tty.setraw(self._slave)
        tty.setraw(self._master)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self.disconnected = False
        self.replies_sent = 0
        self.replies_garbled = 0
        self._rng = random.Random(faults.seed)
        self._pending: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sim {self.port}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    # -- the serving loop ----------------------------------------------------------
    def _run(self) -> None:
        model = self.endpoint.model
        while not self._stop.is_set():
            now = self.clock()
            if not self.disconnected and model.fault_due(self.faults.disconnect_at, now):
                log.info("%s: injected disconnect", self.port)
                self.disconnected = True
                self._close_fds()
            if self.disconnected:
                # Unplugged but powered: the device's own watchdog and timer still run.
                with model.lock:
                    self.endpoint.tick(now)
                self._stop.wait(TICK_S)
                continue
            timeout = TICK_S
            if self._pending:
                timeout = max(0.0, min(timeout, self._pending[0][0] - now))
            try:
                ready, _, _ = select.select([self._master], [], [], timeout)
            except (OSError, ValueError):
                return
            now = self.clock()
            silent = model.fault_due(self.faults.silent_at, now)
            if ready:
                data = self._read()
                if data and not silent:
                    with model.lock:
                        replies = self.endpoint.receive(data, now)
                    for reply in replies:
                        self._queue(reply, now)
            with model.lock:
                events = self.endpoint.tick(now)
            if not silent:
                for frame in events:
                    self._queue(frame, now, garble=False)
            self._flush(self.clock())

    def _read(self) -> bytes:
        try:
            return os.read(self._master, READ_CHUNK)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:   # no host has the slave open right now
                time.sleep(TICK_S)
                return b""
            raise

    def _queue(self, data: bytes, now: float, garble: bool = True) -> None:
        if garble and self.faults.garble > 0 and self._rng.random() < self.faults.garble:
            buf = bytearray(data)
            buf[self._rng.randrange(len(buf))] ^= 1 << self._rng.randrange(8)
            data = bytes(buf)
            self.replies_garbled += 1
        due = now + self.faults.delay_ms / 1000.0
        self._pending.append((due, data))

    def _flush(self, now: float) -> None:
        while self._pending and self._pending[0][0] <= now:
            _, data = self._pending.pop(0)
            try:
                os.write(self._master, data)
                self.replies_sent += 1
            except BlockingIOError:
                log.warning("%s: host not reading; reply dropped", self.port)
            except OSError:
                return
