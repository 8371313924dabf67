"""The room's devices as the clinic service holds them: one slot per registered device.

A slot keeps its device's link open for as long as the service runs, so the port lock is
held the whole time: a CLI session on a device the service holds is refused by the lock
(docs/safety.md §4), and two requests cannot both reach the wire. While no session runs,
the slot's watch identifies the device every `WATCH_PERIOD_S` (read-only: the profile's
`identify` operation and one telemetry read; nothing is ever written) and keeps what it
found: present or absent, the model it reports, a latched fault. A session borrows the
link (`borrow`); its `close()` hands it back instead of closing the port.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.device.idle import idle_variables
from controller.device.link import DeviceLink, identify
from controller.profiles.identity import IdentityError
from controller.profiles.model import Profile
from controller.records.clinic_tables import DeviceRow
from protocols.errors import ProtocolError

log = logging.getLogger(__name__)

# How often an idle device is looked at: a device unplugged or tripped shows on the screens
# within this (and the slot's lock is held for one identification, ~50-300 ms, each time).
WATCH_PERIOD_S = 3.0

# What a slot shows while no session runs on it.
IDLE, ABSENT, FAULT, RELEASED = "idle", "absent", "fault", "released"

LinkOpener = Callable[[Profile, str], DeviceLink]
Changed = Callable[["DeviceSlot"], None]


class BorrowedLink(DeviceLink):
    """The slot's link lent to one session: `close()` hands it back (the port stays
    locked by the service); the session's interrupt check and event handler go with it."""

    def close(self) -> None:
        self.set_interrupt(None)
        self.set_event_handler(None)


@dataclass
class Watch:
    """What the latest look at an idle device found."""

    present: bool = False
    problem: str = ""
    """Why the device cannot be used now (absent, wrong model, latched fault), or ""."""
    identity: dict[str, str] = field(default_factory=dict)
    checked_at: float = 0.0
    """time.time() of the look."""


class DeviceSlot:
    """One registered device: its profile, its held link, its watch, and its session."""

    def __init__(self, row: DeviceRow, profile: Profile | None, load_problem: str, *,
                 opener: LinkOpener = DeviceLink.open, on_change: Changed | None = None) -> None:
        self.row = row
        self.name = row.name
        self.profile = profile
        self.load_problem = load_problem
        self._opener = opener
        self._on_change = on_change
        self._link: DeviceLink | None = None
        self.lock = threading.Lock()
        """Held for one identification or for a whole session: never both at once."""
        self.busy_with: object | None = None
        """The run using the device (set by the runs manager under `lock`)."""
        self.watch = Watch(problem="not looked at yet")
        self.released_by = ""
        self.calibration_cache: tuple[float, dict[str, object]] | None = None
        """(monotonic time, status) as screens last saw it (controller/service/api_devices)."""
        """The technician who released the port to a CLI tool (calibration), or ""."""

    # -- the link -------------------------------------------------------------------------
    def borrow(self, profile: Profile, port: str) -> DeviceLink:
        """For `Session(link_factory=...)`: the held link, opened again if it was lost."""
        del port  # always the registered port
        link = self._open()
        return BorrowedLink(profile, link.engine)

    def _open(self) -> DeviceLink:
        if self._link is None:
            assert self.profile is not None
            self._link = self._opener(self.profile, self.row.port)
        return self._link

    def drop_link(self) -> None:
        """Close the port (a lost link is opened again at the next look or session)."""
        if self._link is not None:
            link, self._link = self._link, None
            try:
                link.close()
            except Exception:
                log.debug("%s: closing the link", self.name, exc_info=True)

    # -- the watch ------------------------------------------------------------------------
    def release(self, by: str) -> None:
        """Close the port and stop looking, so that a technician's CLI tool (calibration,
        `devices pin`) can open it; sessions are refused until `hold`. Caller checked idle."""
        self.released_by = by
        self.drop_link()
        self._found(Watch(False, f"released to a technician ({by}); not held by the "
                                 "service", {}, time.time()))

    def hold(self) -> None:
        """Take the port back; the next look opens it (refused while a CLI holds it). A
        technician may have calibrated it meanwhile: its status is read again."""
        self.released_by = ""
        self.calibration_cache = None

    def look(self) -> None:
        """Identify the device if it is idle (skipped while a session holds it)."""
        if self.released_by:
            return
        if self.profile is None:
            self._found(Watch(False, self.load_problem, {}, time.time()))
            return
        if not self.lock.acquire(blocking=False):
            return
        try:
            if self.busy_with is None:
                self._found(self._identify(self.profile))
        finally:
            self.lock.release()

    def look_now(self, profile: Profile) -> None:
        """Identify now; the caller holds `lock` (a start request checks the device)."""
        self._found(self._identify(profile))

    def _identify(self, profile: Profile) -> Watch:
        now = time.time()
        problem = ""
        identity: dict[str, str] = {}
        for variables in idle_variables(profile):
            try:
                found = identify(self._open(), variables)
            except IdentityError as exc:
                return Watch(True, f"device identity unreadable: {exc}", {}, now)
            except ProtocolError as exc:
                self.drop_link()
                return Watch(False, f"absent: {exc}", {}, now)
            identity = dict(found.identity)
            expected = self.row.serial
            serial = found.identity.get("serial", "")
            if expected and serial and serial != expected:
                problem = (f"the device on {self.row.port} reports serial {serial}, not the "
                           f"registered {expected}")
            elif found.latched_fault and not problem:
                where = ", ".join(f"{k} {v}" for k, v in variables.items())
                problem = f"not ready: {found.latched_fault}" + (f" ({where})" if where else "")
        return Watch(True, problem, identity, now)

    def _found(self, watch: Watch) -> None:
        changed = (watch.present, watch.problem) != (self.watch.present, self.watch.problem)
        self.watch = watch
        if changed and self._on_change is not None:
            self._on_change(self)

    def idle_state(self) -> str:
        if self.released_by:
            return RELEASED
        if not self.watch.present:
            return ABSENT
        return FAULT if self.watch.problem else IDLE

    def close(self) -> None:
        with self.lock:
            self.drop_link()


class DeviceWatch:
    """One thread looks at every idle device in turn, every `WATCH_PERIOD_S`."""

    def __init__(self, slots: Callable[[], list[DeviceSlot]],
                 period_s: float = WATCH_PERIOD_S) -> None:
        self._slots = slots
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="device watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for slot in self._slots():
                if self._stop.is_set():
                    return
                try:
                    slot.look()
                except Exception:
                    log.exception("device watch: %s", slot.name)
            self._stop.wait(self.period_s)
