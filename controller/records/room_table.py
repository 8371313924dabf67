"""The rooms sharing one records database: each clinic service's heartbeat and what it is
doing now (operational state for the other rooms' read-only view; not records, not audited)."""

from __future__ import annotations

from controller.records.database import Database


class RoomTable:
    """The `rooms` table, written through `db` (composed into `RecordStore`)."""

    def __init__(self, db: Database) -> None:
        self._db = db
