"""Fake clocks: time that moves only when a test moves it.

- FakeClock: a `clock()` callable for code that takes one (sessions, dose meters,
  the GC policy, the simulator's models). Tests set or advance `now`.
- Timeline: a FakeClock with actions scheduled on it (a stop request at t=...).
- VirtualClock: stands in for the engines' `time` module while they talk to a
  ScriptedPort, so timeouts and retries run in full without any waiting.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class FakeClock:
    """A monotonic clock read by calling it; `now` is whatever the test set."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Timeline(FakeClock):
    """A FakeClock with things scheduled on it (wake-ups, a stop request)."""

    def __init__(self, now: float = 1000.0) -> None:
        super().__init__(now)
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # ties run in the order they were scheduled

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._due, (when, next(self._order), action))

    def advance(self, seconds: float, until_event: bool = False) -> None:
        """Move time on, running what falls due; stop early at the first one if asked."""
        end = self.now + seconds
        while self._due and self._due[0][0] <= end:
            when, _, action = heapq.heappop(self._due)
            self.now = max(self.now, when)
            action()
            if until_event:
                return
        self.now = end


# Every look at a VirtualClock costs this much: code that polls the clock without
# reading still sees time pass, so a busy loop ends at its deadline instead of spinning.
TICK_S = 1e-6


class VirtualClock:
    """The engines' time.monotonic while they talk to a ScriptedPort.

    A read that comes back short has waited until its deadline, as a real port's
    does: the clock jumps there.
    """

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def monotonic(self) -> float:
        self.t += TICK_S
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)

    def wait_until(self, deadline: float) -> None:
        self.t = max(self.t, deadline)
