"""A TCP proxy that can freeze: connections stay open but nothing passes, as when the network
between a room's PC and the database server goes quiet (no refusal, no reset: a query hangs)."""

from __future__ import annotations

import select
import socket
import threading

CHUNK = 65536
POLL_S = 0.02


class FreezingProxy:
    """127.0.0.1:`port` → `target`; `frozen` holds every byte until it is cleared."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        self._listener.settimeout(POLL_S * 5)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.target)
            pump = threading.Thread(target=self._pump, args=(client, server), daemon=True)
            pump.start()
            self._threads.append(pump)

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        try:
            while not self._stop.is_set():
                if self.frozen.is_set():
                    self._stop.wait(POLL_S)
                    continue
                ready, _, _ = select.select([a, b], [], [], POLL_S)
                for sock in ready:
                    data = sock.recv(CHUNK)
                    if not data:
                        return
                    peer[sock].sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(1)
