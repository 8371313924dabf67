"""The rooms sharing one records database: each clinic service's heartbeat and what it is
doing now (operational state for the other rooms' read-only view; not records, not audited).

One row per room name. A running service writes its row every few seconds (`heartbeat`); a
row whose heartbeat is older than `ROOM_STALE_S` is a room not responding (crashed, cut off,
or its PC off). A service that shuts down cleanly deletes its row (`leave`), so the list holds
the rooms that run now and the ones that stopped answering; a crashed room's row stays (stale)
until that room starts again. Time stamps are UTC ISO text (`database.now_iso`), written by
each room's own clock: the rooms' PCs keep time (NTP), as the records already need.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controller.records.database import Database, now_iso
from controller.records.sql import Row

# A room whose last heartbeat is older than this is shown as not responding: three missed
# heartbeats of the clinic service (controller.service.rooms.HEARTBEAT_S = 5 s).
ROOM_STALE_S = 15.0

_UPSERT = """INSERT INTO rooms (name, host, pid, url, started_at, heartbeat_at, activity)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET
        started_at = CASE WHEN rooms.pid = excluded.pid AND rooms.host = excluded.host
                          THEN rooms.started_at ELSE excluded.started_at END,
        host = excluded.host, pid = excluded.pid, url = excluded.url,
        heartbeat_at = excluded.heartbeat_at, activity = excluded.activity"""


@dataclass(frozen=True)
class RoomRow:
    """One room's last heartbeat, as another room reads it."""

    name: str
    host: str
    pid: int
    url: str
    started_at: str
    """When this process of the room first wrote its row (UTC ISO)."""
    heartbeat_at: str
    activity: list[dict[str, Any]] = field(default_factory=list)
    """Each device the room holds, as its service wrote it (controller.service.rooms)."""
    age_s: float = 0.0
    """Seconds since the heartbeat, when read (never negative: a clock ahead reads 0)."""
    stale: bool = False
    """No heartbeat for more than ROOM_STALE_S: the room is not responding."""

    def same_process(self, host: str, pid: int) -> bool:
        return self.host == host and self.pid == pid


def _age_s(stamp: str, now: datetime) -> float:
    try:
        then = datetime.fromisoformat(stamp)
    except ValueError:  # written by hand or by a broken writer: treat as long gone
        return float("inf")
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return max(0.0, (now - then).total_seconds())


def _activity(text: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _row(r: Row, now: datetime, stale_s: float) -> RoomRow:
    age = _age_s(str(r["heartbeat_at"]), now)
    return RoomRow(name=r["name"], host=r["host"], pid=int(r["pid"]), url=r["url"],
                   started_at=r["started_at"], heartbeat_at=r["heartbeat_at"],
                   activity=_activity(r["activity"]), age_s=round(age, 3),
                   stale=age > stale_s)


class RoomTable:
    """The `rooms` table, written through `db` (composed into `RecordStore`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def heartbeat(self, name: str, host: str, pid: int, url: str,
                  activity: list[dict[str, Any]]) -> None:
        """Write the room's row now (insert or update); `started_at` is kept while the same
        process (host and pid) writes it, and set afresh when another one does. RecordsError
        when the database cannot be written: the caller logs it, sessions go on."""
        text = json.dumps(activity, separators=(",", ":"), sort_keys=True)
        now = now_iso()
        with self._db.write(f"write room '{name}''s heartbeat", notify=False) as conn:
            conn.execute(_UPSERT, (name, host, pid, url, now, now, text))

    def claim(self, name: str, host: str, pid: int, url: str,
              activity: list[dict[str, Any]], *,
              alive: bool = True, stale_s: float = ROOM_STALE_S) -> RoomRow | None:
        """Write the room's first heartbeat unless another live service holds the name: then
        nothing is written and that service's row is returned. The row of another process
        is taken over when its heartbeat is stale, or when the caller knows that process has
        ended (`alive` False: same host, no such pid). One transaction: two services
        starting at once cannot both claim the name."""
        text = json.dumps(activity, separators=(",", ":"), sort_keys=True)
        now_text = now_iso()
        with self._db.write(f"claim room '{name}'") as conn:
            old = conn.execute("SELECT * FROM rooms WHERE name = ?", (name,)).fetchone()
            if old is not None:
                held = _row(old, datetime.now(UTC), stale_s)
                if not held.same_process(host, pid) and not held.stale and alive:
                    return held
            conn.execute(_UPSERT, (name, host, pid, url, now_text, now_text, text))
        return None

    def room(self, name: str, stale_s: float = ROOM_STALE_S) -> RoomRow | None:
        with self._db.read("read a room") as conn:
            r = conn.execute("SELECT * FROM rooms WHERE name = ?", (name,)).fetchone()
        return None if r is None else _row(r, datetime.now(UTC), stale_s)

    def rooms(self, stale_s: float = ROOM_STALE_S) -> list[RoomRow]:
        """Every room with a row, by name, with its heartbeat's age and whether it is stale."""
        with self._db.read("read the rooms") as conn:
            found = conn.execute("SELECT * FROM rooms ORDER BY name").fetchall()
        now = datetime.now(UTC)
        return [_row(r, now, stale_s) for r in found]

    def leave(self, name: str, host: str, pid: int) -> bool:
        """A clean shutdown: delete the room's row if this process (host and pid) still
        holds it (a newer service of the room keeps its own). Whether a row was deleted."""
        with self._db.write(f"leave room '{name}'", notify=False) as conn:
            held = conn.execute("SELECT host, pid FROM rooms WHERE name = ?",
                                (name,)).fetchone()
            if held is None or (held["host"], int(held["pid"])) != (host, pid):
                return False
            conn.execute("DELETE FROM rooms WHERE name = ? AND host = ? AND pid = ?",
                         (name, host, pid))
            return True
