"""Everything one `modctl serve` process holds: the records, the accounts, the device slots,
the runs and the live stream. Built once at start; the HTTP routes only read it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.calibration.gate import registered_profile
from controller.clinic.room_names import room_from_env
from controller.records.clinic_tables import DeviceRow
from controller.records.store import RecordStore
from controller.service.accounts import Accounts
from controller.service.alarms import AlarmBook
from controller.service.auth import Authenticator, LoginLimiter, TokenBook
from controller.service.devices import DeviceSlot, DeviceWatch, LinkOpener
from controller.service.events import EventHub
from controller.service.plan_runs import PlanRuns
from controller.service.rooms import (
    ROOM_EVENTS,
    Heartbeat,
    check_room,
    holds,
)
from controller.service.runs import Runs
from controller.session.service import ClinicRules

log = logging.getLogger(__name__)


@dataclass
class ServiceOptions:
    """How the service was started (the command line's choices)."""

    idle_s: float
    insecure_http: bool = False
    """Serving plain HTTP on a non-loopback address (shown on every page, logged)."""
    plans_dir: Path | None = None
    """Reviewed plan files the API may run by name, beside the shipped presets."""
    allowed_origins: tuple[str, ...] = ()
    """Origins whose cookie-authenticated requests need no CSRF header (the console's own)."""
    room: str | None = field(default_factory=room_from_env)
    """The treatment room this service serves (`--room`, else $MODCTL_ROOM): it holds only
    the devices registered in that room. Required on a shared (PostgreSQL) database; None on
    a clinic's one PC, where it holds the devices registered without a room."""


@dataclass
class ServiceContext:
    store: RecordStore
    accounts: Accounts
    auth: Authenticator
    hub: EventHub
    alarms: AlarmBook
    runs: Runs
    plans: PlanRuns
    options: ServiceOptions
    slots: dict[str, DeviceSlot] = field(default_factory=dict)
    watch: DeviceWatch | None = None
    heartbeat: Heartbeat | None = None
    """This room's row in the rooms table (controller.service.rooms), once claimed."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _opener: LinkOpener | None = None
    publish: Callable[[str, dict[str, object]], None] = lambda kind, data: None

    @classmethod
    def build(cls, store: RecordStore, rules: ClinicRules, options: ServiceOptions, *,
              opener: LinkOpener | None = None) -> ServiceContext:
        """RoomError (a ClinicError) when the database is shared and no room is given."""
        check_room(options.room, store.shared, str(store.path))
        hub = EventHub()
        alarms = AlarmBook(hub.publish)
        ctx: ServiceContext | None = None

        def publish(kind: str, data: dict[str, object]) -> None:
            alarms.observe(kind, data)
            hub.publish(kind, data)
            heartbeat = ctx.heartbeat if ctx is not None else None
            if heartbeat is not None and kind in ROOM_EVENTS:
                heartbeat.poke()   # other rooms see a start or an end within a second

        accounts = Accounts(store)
        auth = Authenticator(accounts, store, TokenBook(options.idle_s), LoginLimiter())
        runs = Runs(store, rules, publish)
        ctx = cls(store, accounts, auth, hub, alarms, runs, PlanRuns(runs, publish), options)
        ctx.publish = publish
        ctx.load_devices(opener)
        return ctx

    def load_devices(self, opener: LinkOpener | None = None) -> None:
        """A slot per registered device still in service, of this service's room only (the
        other rooms' devices are plugged into their own PCs)."""
        self._opener = opener
        room = self.options.room
        elsewhere: list[str] = []
        for row in self.store.devices():
            if holds(room, row.room):
                self.add_slot(row)
            elif row.room is None:
                elsewhere.append(row.name)
        if elsewhere:
            log.warning("registered without a room, so not held by room '%s': %s (only a "
                        "service started without a room holds them)", room,
                        ", ".join(elsewhere))

    def add_slot(self, row: DeviceRow) -> DeviceSlot:
        """Hold a registered device, with its pinned profile (a profile that cannot be used
        keeps the slot, with the reason, so that screens show it)."""
        loaded = registered_profile(row)
        profile, problem = (None, f"device '{row.name}' {loaded}") if isinstance(loaded, str) \
            else (loaded.profile, "")
        if problem:
            log.warning("%s", problem)
        kwargs = {"opener": self._opener} if self._opener is not None else {}
        slot = DeviceSlot(row, profile, problem, on_change=self._slot_changed, **kwargs)
        with self._lock:
            self.slots = {**self.slots, row.name: slot}   # readers iterate a stable dict
        return slot

    def _slot_changed(self, slot: DeviceSlot) -> None:
        self.publish("device", {"device": slot.name, "state": self.runs.device_state(slot),
                                    "problem": slot.watch.problem})

    def start_watch(self) -> None:
        self.watch = DeviceWatch(lambda: list(self.slots.values()))
        self.watch.start()

    def claim_room(self) -> None:
        """Take this room's row among the rooms (RoomError when another live service serves
        the room); nothing to do without a room."""
        if self.options.room is not None and self.heartbeat is None:
            heartbeat = Heartbeat(self, self.options.room)
            heartbeat.claim()
            self.heartbeat = heartbeat

    def close(self) -> None:
        """Stop watching, close every held port (sessions were stopped before), and leave
        the rooms list."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.watch is not None:
            self.watch.stop()
        for slot in self.slots.values():
            slot.close()
