"""The live stream's fan-out: session and device threads publish, each client reads its own
bounded queue.

A publisher never waits on a client. `publish` hands the event to the event loop with one
`call_soon_threadsafe` (a write to the loop's self-pipe) and returns; the loop copies it
into each subscriber's queue. A subscriber whose queue is full is a slow client: it is
dropped (its stream ends with a `dropped` event the client can see), never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Events a client may lag behind before it is dropped: ~10 s of telemetry from 32
# sessions at 5 Hz would be 1600; a screen that cannot keep up with 256 is not showing
# the room as it is, and must reconnect (and re-read the state) instead.
CLIENT_QUEUE_MAX = 256
# At most this many live-stream clients at once (each holds a queue and a connection).
MAX_CLIENTS = 64
# A client whose next event is older than this is dropped, however few events it lags
# behind: a socket's kernel buffers hold megabytes, so a slow reader can fall minutes behind
# before its queue fills. A screen that far behind shows a room that no longer exists.
MAX_LAG_S = 5.0
# The last event of every stream when the service shuts down.
CLOSING = "closing"


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[Message] = field(
        default_factory=lambda: asyncio.Queue(CLIENT_QUEUE_MAX))
    dropped: bool = False


@dataclass(frozen=True)
class Message:
    """One event, encoded once for every client (`text` is the SSE message)."""

    kind: str
    text: str
    at: float = field(default_factory=time.monotonic)
    """When it was queued: a client still being sent it `MAX_LAG_S` later is dropped."""


class EventHub:
    """Publish from any thread; subscribe from the event loop's thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self.closed = False
        self.published = 0
        self.dropped_clients = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that serves clients (set once it runs)."""
        self._loop = loop

    def publish(self, kind: str, data: Mapping[str, object]) -> None:
        """Queue an event for every client; returns at once whatever the clients do."""
        loop = self._loop
        if loop is None or not self._subscribers:
            return
        event = {"seq": next(self._seq), "kind": kind, "at": time.time(), "data": dict(data)}
        try:
            loop.call_soon_threadsafe(self._fan_out, event)
        except RuntimeError:  # the loop has closed (shutdown): nobody is listening
            return
        self.published += 1

    def close(self) -> None:
        """End every stream (shutdown): each client gets a `closing` event, then EOF."""
        self.closed = True
        loop = self._loop
        if loop is not None:
            event = {"seq": next(self._seq), "kind": CLOSING, "at": time.time(),
                     "data": {"reason": "the clinic service is shutting down"}}
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._fan_out, event)

    def subscribe(self) -> Subscriber | None:
        """A new client's queue, or None when the service has as many as it takes (or is
        closing)."""
        with self._lock:
            if self.closed or len(self._subscribers) >= MAX_CLIENTS:
                return None
            sub = Subscriber()
            self._subscribers.add(sub)
            return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    @property
    def clients(self) -> int:
        return len(self._subscribers)

    def _fan_out(self, event: dict[str, object]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        if not subscribers:
            return
        message = Message(str(event["kind"]), sse(event))   # encoded once, not per client
        for sub in subscribers:
            if sub.dropped:
                continue
            try:
                sub.queue.put_nowait(message)
            except asyncio.QueueFull:
                sub.dropped = True
                self.dropped_clients += 1
                log.warning("live stream: a client fell %d events behind; dropped",
                            CLIENT_QUEUE_MAX)


def sse(event: Mapping[str, object]) -> str:
    """One Server-Sent Events message: `id`, `event` and one `data` line of JSON."""
    data = json.dumps(event.get("data", {}), separators=(",", ":"), default=str)
    return f"id: {event.get('seq', 0)}\nevent: {event.get('kind', 'message')}\ndata: {data}\n\n"
