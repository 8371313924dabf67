"""Sessions against farm devices, the way a controller process runs many at once."""

from __future__ import annotations

import bisect
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import SETTINGS
from simfarm import Dev

from controller.device.link import DeviceLink, open_engine
from controller.modality.prescription import build_prescription
from controller.profiles.loader import resolve_profile
from controller.profiles.model import Profile
from controller.records.store import RecordStore
from controller.session.scheduling import every, make_scheduler
from controller.session.worker import Session
from protocols.map_common import Scalar

_PROFILES: dict[str, Profile] = {}
_PROFILES_LOCK = threading.Lock()


def profile(pid: str) -> Profile:
    with _PROFILES_LOCK:
        found = _PROFILES.get(pid)
        if found is None:
            found = _PROFILES[pid] = resolve_profile(pid).profile
        return found


def make_session(dev: Dev, planned_s: float, store: RecordStore | None = None,
                 settings: dict[str, str] | None = None, **kw: Any) -> Session:
    prof = profile(dev.pid)
    rx = build_prescription(prof, settings or SETTINGS[dev.pid], planned_s)
    kw.setdefault("link_factory", TracedLink.open)
    return Session(prof, rx, dev.port, store=store, operator="bench", **kw)


def start_staggered(sessions: Sequence[Session], stagger_s: float,
                    rng: random.Random,
                    before_start: Callable[[Session], None] | None = None) -> None:
    """Start every session at a random moment within `stagger_s` (0: all at once);
    `before_start` runs just before each one starts (e.g. `Wakeups.add`)."""
    offsets = sorted((rng.uniform(0.0, stagger_s) if stagger_s > 0 else 0.0, i)
                     for i in range(len(sessions)))
    t0 = time.monotonic()
    for offset, i in offsets:
        delay = t0 + offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if before_start is not None:
            before_start(sessions[i])
        sessions[i].start()


class Wakeups:
    """The periodic wake-up job `modctl session run` gives its session
    (controller/cli/session_cmd.py `run_session`): APScheduler `every(scheduler,
    profile.safety.poll_period_s, session.wake, ...)`, added just before the session
    starts. One scheduler for the whole run (one controller process), one job per
    session. Disabled, `add` does nothing (the benchmarks' figures before issue 10)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._scheduler = make_scheduler() if enabled else None
        self._jobs: list[Any] = []
        if self._scheduler is not None:
            self._scheduler.start()

    def add(self, session: Session) -> None:
        if self._scheduler is not None:
            self._jobs.append(every(self._scheduler, session.profile.safety.poll_period_s,
                                    session.wake, "session wake-up"))

    def clear(self) -> None:
        """Remove every job (between rounds; the sessions have ended)."""
        for job in self._jobs:
            job.remove()
        self._jobs.clear()

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)


@contextmanager
def records(enabled: bool) -> Iterator[RecordStore | None]:
    """One records database for the whole run (one controller process, one store)."""
    if not enabled:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="modctl-bench-") as tmp:
        store = RecordStore(Path(tmp) / "records.db")
        try:
            yield store
        finally:
            store.close()


class TracedLink(DeviceLink):
    """DeviceLink that notes every operation (op, began, ended, failed) and the moment
    before every write to the port. Passed to Session as its link_factory; costs two
    monotonic() calls per operation and one per write."""

    trace: list[tuple[str, float, float, bool]]
    writes: list[float]

    @classmethod
    def open(cls, profile: Profile, port: str) -> TracedLink:
        engine: Any = open_engine(profile, port)
        link = cls(profile, engine)
        link.trace = []
        link.writes = []
        transport = getattr(engine, "_transport", None) or engine._t   # ScpiEngine: _t
        write = transport.write
        stamps = link.writes

        def traced_write(data: bytes) -> None:
            stamps.append(time.monotonic())
            write(data)

        transport.write = traced_write
        return link

    def run(self, op: str, variables: Mapping[str, Scalar]) -> dict[str, Scalar]:
        t0 = time.monotonic()
        failed = True
        try:
            out = super().run(op, variables)
            failed = False
            return out
        finally:
            self.trace.append((op, t0, time.monotonic(), failed))

    def first_write_after(self, t: float) -> float | None:
        """The first write that began at or after `t` (an operation's command)."""
        i = bisect.bisect_left(self.writes, t)
        return self.writes[i] if i < len(self.writes) else None


def attribute(session: Session, planned: float, on: float, off: float,
              asked: float | None = None) -> dict[str, float] | None:
    """Split a stop error (or a stop latency when `asked` is given) between the controller
    and the device side (seconds). `due` is the planned end, or the moment of the request.

    - ctrl_start: t_start (taken before the start command) to the start command's first write;
    - dev_start: that write to the device's "on" (pty, simulator scheduling, a retry);
    - ctrl_stop: due to the first write of the stop (wake-up, GIL, code, a poll in flight);
    - dev_stop: that write to the device's "off" (pty, simulator scheduling, a retry);
    - behind_poll: part of ctrl_stop spent waiting for a poll in flight at `due`.
    error = (ctrl_stop + dev_stop) - (ctrl_start + dev_start).
    """
    link = session.link
    if not isinstance(link, TracedLink) or session.t_start is None:
        return None
    due = asked if asked is not None else session.t_start + planned
    start = next((t0 for op, t0, _, _ in link.trace if op == "start"), None)
    stop = next((t0 for op, t0, _, _ in link.trace
                 if op in ("stop", "emergency_stop") and t0 >= session.t_start), None)
    if start is None or stop is None:
        return None
    w_on, w_off = link.first_write_after(start), link.first_write_after(stop)
    if w_on is None or w_off is None:
        return None
    behind = 0.0
    for op, t0, t1, _ in link.trace:
        if op == "read_telemetry" and t0 <= due < t1:
            behind = t1 - due
    return {"ctrl_start": w_on - session.t_start, "dev_start": on - w_on,
            "ctrl_stop": w_off - due, "dev_stop": off - w_off, "behind_poll": behind}
