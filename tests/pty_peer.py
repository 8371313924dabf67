"""A scripted device on a real pseudo-terminal, for protocol engine tests.

The responder gets each chunk of bytes the host wrote and returns bytes to send
back (or b"" for silence). The responder may keep state and must frame by
itself: chunks are as the kernel delivers them.
"""

from __future__ import annotations

import os
import select
import threading
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

Responder = Callable[[bytes], bytes]
# How often the peer thread checks for shutdown.
POLL_S = 0.01


class PtyPeer:
    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # a fresh pty echoes and translates CR/LF
        self.port = os.ttyname(self.slave)
        self.received = bytearray()
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def send(self, data: bytes) -> None:
        """Send unsolicited bytes to the host."""
        os.write(self.master, data)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], POLL_S)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            self.received += data
            reply = self.responder(data)
            if reply:
                os.write(self.master, reply)

    def close(self) -> None:
        if self._closed:        # closing twice would close fds reused by others
            return
        self._closed = True
        self._stop.set()
        self._thread.join(1.0)
        for fd in (self.master, self.slave):
            with suppress(OSError):
                os.close(fd)


@contextmanager
def pty_peer(responder: Responder) -> Iterator[PtyPeer]:
    peer = PtyPeer(responder)
    try:
        yield peer
    finally:
        peer.close()
