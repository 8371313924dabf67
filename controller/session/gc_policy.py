"""Full garbage collections only at moments when no output is about to stop.

CPython's full (generation 2) collection holds the GIL while it walks every
tracked object: with 64 sessions in one process that was a 110-135 ms pause
(78-98 ms of CPU) every few seconds, and each stop due inside one came that
late (stop error p99 40 ms at 64 sessions, against a 20 ms target; measured in
bench/stop_error.py, which records every pause). Young collections stay
automatic (they take well under a millisecond). Full ones are taken off the
automatic schedule and run by one daemon thread when they are due and no
watched session is within SAFE_MARGIN_S of its planned end. The start-up heap
(modules, profiles, schemas: about 33 000 objects) is frozen first, so full
collections only walk what sessions created.

An operator stop can still arrive during a collection; that is the residual
exposure, the same as with CPython's own schedule, and the collections are
shorter without the frozen start-up heap.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# No full collection starts this close to a watched session's planned end: far
# longer than a full collection takes at 64 sessions (about 0.1 s measured).
SAFE_MARGIN_S = 0.5
# How often the collector thread looks for a safe moment.
CHECK_PERIOD_S = 0.1
# A full collection is due after this many young (generation 1) collections,
# CPython's own default, but never more often than MIN_INTERVAL_S.
DUE_AFTER_GEN1 = 10
MIN_INTERVAL_S = 2.0
# If no safe moment comes for this long, collect anyway: memory stays bounded.
MAX_DEFER_S = 30.0
# A generation-2 threshold CPython never reaches: full collections only from here.
_NEVER = 1 << 30

Remaining = Callable[[], float | None]


class CollectionPolicy:
    """The process-wide policy; `POLICY` is the instance sessions use."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._watched: dict[int, Remaining] = {}
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None
        self.last_full = clock()
        self._due_since: float | None = None
        self.full_collections = 0
        self.deferred_to_limit = 0

    @property
    def installed(self) -> bool:
        return self._thread is not None

    def install(self) -> None:
        """Freeze the start-up heap and take over full collections (once per process)."""
        with self._lock:
            if self._thread is not None:
                return
            gc.collect()
            gc.freeze()
            young, middle, _ = gc.get_threshold()
            gc.set_threshold(young, middle, _NEVER)
            self.last_full = self._clock()
            self._thread = threading.Thread(target=self._loop, name="gc policy", daemon=True)
            self._thread.start()
        log.debug("full garbage collections moved off the planned ends")

    def watch(self, remaining: Remaining) -> int:
        """Watch a session: `remaining()` is the time to its planned end, None when none."""
        with self._lock:
            key = next(self._keys)
            self._watched[key] = remaining
        return key

    def forget(self, key: int) -> None:
        with self._lock:
            self._watched.pop(key, None)

    def safe_now(self) -> bool:
        """True when no watched session's planned end is within SAFE_MARGIN_S."""
        with self._lock:
            watched = list(self._watched.values())
        for remaining in watched:
            try:
                left = remaining()
            except Exception:   # a session mid-teardown: treat as unsafe this time
                return False
            if left is not None and left < SAFE_MARGIN_S:
                return False
        return True

    def step(self) -> bool:
        """Run a full collection if one is due and allowed now; True if it ran."""
        now = self._clock()
        if gc.get_count()[2] < DUE_AFTER_GEN1 or now - self.last_full < MIN_INTERVAL_S:
            return False
        if self._due_since is None:
            self._due_since = now
        waited = now - self._due_since        # since it became due, not since the last one
        forced = waited >= MAX_DEFER_S
        if not forced and not self.safe_now():
            return False
        gc.collect()
        self.last_full = self._clock()
        self._due_since = None
        self.full_collections += 1
        if forced:
            self.deferred_to_limit += 1
            log.info("full garbage collection after %.0f s without a safe moment", waited)
        return True

    def _loop(self) -> None:
        while True:
            time.sleep(CHECK_PERIOD_S)
            try:
                self.step()
            except Exception:   # never let the policy thread die silently
                log.exception("garbage collection policy step failed")


POLICY = CollectionPolicy()
