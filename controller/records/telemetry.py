"""Session telemetry: buffered in memory, written in batches, each batch sealed by one audit entry.

A sample is written with the next event, at session close, by `Telemetry.flush`, or once
`SAMPLE_FLUSH_S` has passed since the last write: one fsync per batch instead of one per sample,
at the price of losing up to that much telemetry (never an event) in a crash.

A write that fails (a full disk) puts the batch it had taken back in front of the buffer, in
order, inside the write lock (the `Database` write hook), so the next write that succeeds
writes it; at most `SAMPLE_BUFFER_MAX` samples wait like this.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.records import integrity
from controller.records.database import (
    SYSTEM_ACTOR,
    Database,
    RecordsError,
    append_audit,
    next_audit_id,
)
from controller.records.sql import Connection

# Telemetry is batched: a crash loses at most this much of it (events are never batched).
SAMPLE_FLUSH_S = 1.0
SAMPLE_BATCH_MAX = 256
# Telemetry kept while writing fails (a full disk): some minutes of samples at the poll rates of
# the shipped profiles, so a short outage loses nothing, yet memory stays bounded. Past it a new
# sample is refused with RecordsError (the session has been told of the failure already).
SAMPLE_BUFFER_MAX = 4096

# (session id, t_s, data JSON, delivered_s, dose JSON): one row of `samples`, as inserted.
Sample = tuple[str, float, str, float | None, str | None]


@dataclass(frozen=True)
class SampleRow:
    """One telemetry sample: `t_s` seconds since the session began."""

    t_s: float
    data: dict[str, Any]
    delivered_s: float | None = None
    dose: dict[str, Any] | None = None


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Telemetry:
    """The telemetry buffer of one store and its writes."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.pending: list[Sample] = []
        """Samples waiting to be written, oldest first."""
        # The batch taken out by the transaction under way (one at a time: the write lock).
        self._in_flight: list[Sample] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        db.add_write_hook(self._end_write)

    def add(self, session_id: str, t_s: float, data: Mapping[str, Any],
            delivered_s: float | None, dose: Mapping[str, Any] | None) -> bool:
        """Buffer one sample; True when a flush is due. Raises RecordsError (and tells the
        failure listeners) when `SAMPLE_BUFFER_MAX` samples are already waiting: this one is
        not kept."""
        sample = (session_id, t_s, integrity.dumps(data), delivered_s,
                  None if dose is None else integrity.dumps(dose))
        with self._lock:
            waiting = len(self.pending) + len(self._in_flight)
            if waiting < SAMPLE_BUFFER_MAX:
                self.pending.append(sample)
            due = (len(self.pending) >= SAMPLE_BATCH_MAX
                   or time.monotonic() - self._last_flush >= SAMPLE_FLUSH_S)
        if waiting >= SAMPLE_BUFFER_MAX:
            error = RecordsError(self._db.path,
                                 f"cannot record telemetry: {waiting} samples are already "
                                 "waiting to be written (the most kept, SAMPLE_BUFFER_MAX = "
                                 f"{SAMPLE_BUFFER_MAX}) because writing keeps failing; this "
                                 "sample was not kept")
            self._db.notify(error)
            raise error
        return due

    def waiting(self) -> int:
        with self._lock:
            return len(self.pending)

    def flush(self) -> None:
        """Write the buffer now, as one batch under one audit entry. On failure the samples
        stay buffered, in order; the failure listeners are told and RecordsError is raised."""
        with self._lock:
            if not self.pending:
                self._last_flush = time.monotonic()
                return
        with self._db.write("record telemetry") as conn:
            entry_id = next_audit_id(conn)
            refs = self.drain(conn, entry_id)
            if refs:
                subject = ",".join(sorted({s[0] for s in self._in_flight}))
                append_audit(conn, SYSTEM_ACTOR, "samples.write", subject, {}, refs, entry_id)

    def take_pending(self) -> list[Sample]:
        """Take every buffered sample out (for the spool while the database is out of reach)."""
        with self._lock:
            batch, self.pending = self.pending, []
            self._last_flush = time.monotonic()
        return batch

    def write_batch(self, batch: list[Sample]) -> None:
        """Write `batch` (spooled samples) as one batch under one audit entry."""
        with self._db.write("record spooled telemetry") as conn:
            entry_id = next_audit_id(conn)
            conn.executemany("INSERT INTO samples (session_id, t_s, data, delivered_s, dose,"
                             " batch) VALUES (?, ?, ?, ?, ?, ?)",
                             [(*s, entry_id) for s in batch])
            subject = ",".join(sorted({s[0] for s in batch}))
            append_audit(conn, SYSTEM_ACTOR, "samples.write", subject, {},
                         [integrity.batch_ref(conn, entry_id)], entry_id)

    def drain(self, conn: Connection, entry_id: int) -> list[dict[str, Any]]:
        """Insert the buffered samples as the batch of audit entry `entry_id`, in the write
        transaction under way; return its row reference (none when nothing was buffered)."""
        with self._lock:
            batch, self.pending = self.pending, []
            self._in_flight = batch
            self._last_flush = time.monotonic()
        if not batch:
            return []
        conn.executemany("INSERT INTO samples (session_id, t_s, data, delivered_s, dose, batch)"
                         " VALUES (?, ?, ?, ?, ?, ?)", [(*s, entry_id) for s in batch])
        return [integrity.batch_ref(conn, entry_id)]

    def _end_write(self, committed: bool) -> None:
        with self._lock:
            if not committed:
                self.pending[:0] = self._in_flight  # in front, in order: they came first
            self._in_flight = []

    def samples(self, session_id: str) -> list[SampleRow]:
        """A session's written telemetry in time order."""
        with self._db.read("read telemetry") as conn:
            rows = conn.execute(
                "SELECT t_s, data, delivered_s, dose FROM samples WHERE session_id = ?"
                " ORDER BY t_s, rowid", (session_id,)).fetchall()
        return [SampleRow(r["t_s"], _loads(r["data"]), r["delivered_s"], _loads(r["dose"]))
                for r in rows]
