"""How other threads reach a session worker: stop requests first, wake-ups coalesced.

A stop request (operator, patient, e-stop, records failure, interlock) must overtake
everything the worker still has to do (design invariant 10). So stops are not queued
behind routine work: they sit in their own slot, the worker checks the slot between
every two exchanges with the device (`stop_wanted`, cheap enough for the engines'
interrupt check), and a wake-up is one flag however many times it was raised. A
FIFO shared by wake-ups and stops let a periodic wake-up job bury a Ctrl-C under
seconds of polls on a device that answered near the slow end of its manual.

Safe to call from signal handlers and any thread: `post` and `wake` only append to
a list and set an Event.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class StopRequest:
    source: str          # operator | patient | fault (the controller itself, e.g. records)
    emergency: bool
    reason: str


class StopMailbox:
    def __init__(self) -> None:
        self._stops: list[StopRequest] = []
        self._signal = threading.Event()

    def post(self, request: StopRequest) -> None:
        """A stop request: the worker takes it before any further routine exchange."""
        self._stops.append(request)
        self._signal.set()

    def wake(self) -> None:
        """Wake the worker early; any number of wake-ups before it runs count as one."""
        self._signal.set()

    def stop_wanted(self) -> bool:
        return bool(self._stops)

    def take(self) -> StopRequest | None:
        """The stop to act on: the first one posted, made an emergency stop when any
        request so far asked for one (a second Ctrl-C while the first is pending)."""
        if not self._stops:
            return None
        first = self._stops[0]
        if first.emergency or not any(r.emergency for r in self._stops):
            return first
        urgent = next(r for r in self._stops if r.emergency)
        return StopRequest(first.source, True, urgent.reason)

    def wait(self, timeout: float) -> None:
        """Sleep until a post, a wake-up or the timeout, then clear the wake-up flag.

        Clearing after waking cannot lose a stop: stops live in their own slot and
        the worker looks at it after every wait."""
        if timeout > 0:
            self._signal.wait(timeout)
        self._signal.clear()
