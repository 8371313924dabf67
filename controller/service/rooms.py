"""This service's room among the rooms sharing one records database (docs/service.md,
"Several rooms").

Each `modctl serve` of a clinic on a shared (PostgreSQL) database serves one named room: it
holds only the devices registered in that room, and every `HEARTBEAT_S` it writes its row in
the `rooms` table with what each of its devices is doing (`activity`). The other rooms read
those rows for their read-only view; control of a device stays with the room that holds it.

The heartbeat is operational state, never records: a write that fails is logged (at INFO,
once per outage) and the next beat tries again; sessions never wait for it and never see it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from controller.clinic.room_names import ROOM_ENV, room_problem
from controller.records.clinic_tables import ClinicError
from controller.records.database import RecordsError
from controller.records.room_table import ROOM_STALE_S, RoomRow
from controller.service.runs import Run

if TYPE_CHECKING:
    from controller.service.context import ServiceContext

log = logging.getLogger(__name__)

# How often the service writes its heartbeat (and its devices' activity) to the shared
# database: another room's view is at most this old (plus its own refresh), and a room that
# has missed three is shown as not responding (room_table.ROOM_STALE_S).
HEARTBEAT_S = 5.0
# A device that starts or ends a session is written at once (`Heartbeat.poke`), but never
# more often than this: a burst of changes is one write.
MIN_BEAT_GAP_S = 0.5
# The live-stream events that change what other rooms see of this one.
ROOM_EVENTS = frozenset({"device", "session"})
# Where the service's room name comes from when the command line gives none.
class RoomError(ClinicError):
    """The service may not start in this room; the message says why and what to do."""


def check_room(room: str | None, shared: bool, where: str) -> None:
    """RoomError when the service may not start with `room` on this database."""
    if room is None:
        if shared:
            raise RoomError(f"the records database {where} is shared by several rooms: give "
                            f"this service its room with --room NAME (or ${ROOM_ENV}); it "
                            "then holds only the devices registered in that room")
        return
    problem = room_problem(room)
    if problem:
        raise RoomError(f"{problem} (--room or ${ROOM_ENV})")


def holds(room: str | None, device_room: str | None) -> bool:
    """Whether a service of `room` holds a device registered in `device_room`."""
    return device_room == room


def held_elsewhere(ctx: ServiceContext, device: str) -> str | None:
    """Why this service cannot act on `device` when another room holds it (for the 404/409
    of a start or stop naming it), or None when it is not another room's device."""
    try:
        row = ctx.store.device(device)
    except RecordsError:
        return None
    if row is None or row.removed or holds(ctx.options.room, row.room):
        return None
    where = f"room '{row.room}'" if row.room else "the clinic's PC without a room"
    return (f"device '{device}' is held by {where}, not by this service "
            f"(room '{ctx.options.room}'): only the room that holds a device starts or stops "
            "its sessions; the Rooms page shows it read-only")


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def activity(ctx: ServiceContext) -> list[dict[str, Any]]:
    """What each held device is doing now, as other rooms may see it: no settings, telemetry
    or dose (those stay with the room), only who is being treated, by whom, and for how long.
    Reads memory only (no device I/O, no database)."""
    out: list[dict[str, Any]] = []
    for slot in list(ctx.slots.values()):
        run = slot.busy_with
        item: dict[str, Any] = {
            "device": slot.name, "profile": slot.row.profile,
            "modality": slot.profile.modality if slot.profile else None,
            "state": ctx.runs.device_state(slot), "session": None}
        if isinstance(run, Run):
            snap = run.session.snapshot()
            remaining = snap["remaining_s"]
            item["session"] = {
                "id": run.id, "patient": run.patient, "operator": run.operator,
                "started_at": _iso(run.started_at), "planned_s": run.session.rx.duration_s,
                "remaining_s": None if remaining is None else round(float(remaining), 1)}
        out.append(item)
    return out


def room_json(row: RoomRow, this_room: bool) -> dict[str, object]:
    return {"name": row.name, "host": row.host, "url": row.url, "started_at": row.started_at,
            "heartbeat_at": row.heartbeat_at, "age_s": row.age_s, "stale": row.stale,
            "this_room": this_room, "devices": row.activity}


def rooms_json(ctx: ServiceContext) -> dict[str, object]:
    """`GET /api/rooms`: every room of the database with its last heartbeat; this room's
    devices as they are now (from memory, fresher than its own row)."""
    room = ctx.options.room
    here: dict[str, object] = {
        "name": room, "host": socket.gethostname(), "url": "", "started_at": None,
        "heartbeat_at": None, "age_s": None, "stale": False, "this_room": True,
        "devices": activity(ctx)}
    problem = ""
    others: list[dict[str, object]] = []
    if room is not None or ctx.store.shared:
        try:
            rows = ctx.store.rooms.rooms()
        except RecordsError as exc:
            rows = []
            problem = f"the other rooms cannot be read now: {exc}"
        for row in rows:
            if row.name == room:
                here.update({k: v for k, v in room_json(row, True).items() if k != "devices"})
            else:
                others.append(room_json(row, False))
    return {"room": room, "shared": ctx.store.shared, "stale_after_s": ROOM_STALE_S,
            "problem": problem, "rooms": [here, *others]}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


class Heartbeat:
    """The room's row in the shared database, written every `period_s` by one daemon thread
    from `claim` (at start) to `stop` (at shutdown, which deletes the row)."""

    def __init__(self, ctx: ServiceContext, room: str, *, period_s: float = HEARTBEAT_S,
                 host: str | None = None, pid: int | None = None) -> None:
        self.ctx = ctx
        self.room = room
        self.period_s = period_s
        self.host = host or socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.url = ""
        """Where this service answers (set once it listens; other rooms show it)."""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="room heartbeat", daemon=True)
        self._failing = False
        self.beats = 0
        self.activity: Callable[[], list[dict[str, Any]]] = lambda: activity(ctx)

    def claim(self) -> None:
        """Take the room's row, or RoomError when another live service holds the room."""
        rooms = self.ctx.store.rooms
        old = rooms.room(self.room)
        alive = True
        if old is not None and old.host == self.host and old.pid != self.pid:
            alive = _pid_alive(old.pid)   # the same PC: a crashed service's row is free now
        held = rooms.claim(self.room, self.host, self.pid, self.url, self.activity(),
                           alive=alive)
        if held is not None:
            raise RoomError(
                f"room '{self.room}' is already served by the clinic service on {held.host} "
                f"(pid {held.pid}, {held.url or 'address not known yet'}; last heartbeat "
                f"{held.age_s:.0f} s ago): one service per room. Stop that one, or give this "
                f"service another room; a room whose service stopped answering is free "
                f"{ROOM_STALE_S:.0f} s after its last heartbeat")

    def start(self) -> None:
        self._thread.start()

    def beat(self) -> bool:
        """Write the row once; False (logged once per outage) when the database refused."""
        if self.ctx.store.out_of_reach():
            # The records go to the local spool: the database is out of reach and the
            # spool's own thread is probing it; no heartbeat connects meanwhile.
            return self._failed("the records database is out of reach (records are spooled)")
        try:
            self.ctx.store.rooms.heartbeat(self.room, self.host, self.pid, self.url,
                                           self.activity())
        except RecordsError as exc:
            return self._failed(str(exc))
        if self._failing:
            self._failing = False
            log.info("room '%s': heartbeat written again", self.room)
        self.beats += 1
        return True

    def _failed(self, why: str) -> bool:
        if not self._failing:
            self._failing = True
            log.info("room '%s': heartbeat not written (%s); other rooms will see this room "
                     "as not responding until it is; sessions go on", self.room, why)
        return False

    def poke(self) -> None:
        """Write soon (a device's state changed): returns at once, from any thread."""
        self._wake.set()

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except Exception:  # a bug here must not end the heartbeat, nor reach a session
                log.exception("room '%s': heartbeat", self.room)
            self._wake.wait(self.period_s)
            self._wake.clear()
            if self._stop.wait(MIN_BEAT_GAP_S):
                return

    def stop(self) -> None:
        """Stop beating and leave the room's row (a clean shutdown)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.period_s + 5)
        try:
            self.ctx.store.rooms.leave(self.room, self.host, self.pid)
        except RecordsError as exc:
            log.info("room '%s': could not leave the rooms list (%s); it will show as not "
                     "responding", self.room, exc)
