"""Session records: sessions, their events and telemetry, the clinic's devices, bookings,
calibrations and service accounts, and a hash-chained audit trail, in one SQLite file behind
`RecordStore`.

All database access goes through `RecordStore`, so a server database can replace the embedded
SQLite file later without touching callers. It is composed of parts that each own one job and
all write through one `Database` (one file, one write lock, one audit chain):

- `database.Database`: connections, ``BEGIN IMMEDIATE`` write transactions, migrations
  (`schema.MIGRATIONS`), write-failure listeners, owner locks;
- `telemetry.Telemetry`: the telemetry buffer and its batched writes;
- `sessions.SessionLog`: sessions and their events (it drains the telemetry buffer into its
  transactions); `export.export_sessions` formats them;
- `device_table.DeviceTable`, `booking_table.BookingTable`, `calibration_table.CalibrationTable`;
- `user_table.UserTable`: the clinic service's accounts;
- `notes_table.NoteTable`: clinicians' notes on sessions (body site, skin, pain, text).

Durability (docs/design.md §2.9): every `add_event` is its own committed transaction, fsynced
(``synchronous=FULL``); telemetry is the one exception (see `add_sample`). Tamper evidence
(`controller.records.integrity`): every row write appends, in its own transaction, an audit entry
holding the SHA-256 of the rows it wrote. Write failures (a full disk, an I/O error) reach
`add_failure_listener` callbacks from whichever thread hit them, outside the write lock;
telemetry that could not be written stays buffered, in order, and is retried.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from datetime import date, datetime
from pathlib import Path
from typing import Any, Self

from controller.records import integrity
from controller.records.booking_table import BookingTable
from controller.records.calibration_table import CalibrationTable
from controller.records.clinic_tables import (
    BOOKING_STATUSES,
    BookingRow,
    CalibrationRow,
    CalibrationStatus,
    DeviceRow,
)
from controller.records.database import (
    BUSY_TIMEOUT_S,
    DB_ENV,
    DB_FILENAME,
    SYSTEM_ACTOR,
    Database,
    FailureListener,
    RecordsError,
    default_db_path,
)
from controller.records.device_table import DeviceTable
from controller.records.export import ExportFormat, export_sessions
from controller.records.integrity import GENESIS_HASH, VerifyResult
from controller.records.notes_table import NoteError, NoteRow, NoteTable
from controller.records.room_table import RoomTable
from controller.records.schema import MIGRATIONS, SCHEMA_VERSION
from controller.records.session_writes import SessionWrites
from controller.records.sessions import (
    EVENT_KINDS,
    EventRow,
    SessionLog,
    SessionRow,
    new_session_id,
)
from controller.records.sql import Connection
from controller.records.target import DbTarget, as_target
from controller.records.telemetry import SampleRow, Telemetry
from controller.records.user_table import UserRow, UserTable

__all__ = [
    "BUSY_TIMEOUT_S", "DB_ENV", "DB_FILENAME", "EVENT_KINDS", "GENESIS_HASH", "MIGRATIONS",
    "SCHEMA_VERSION", "SYSTEM_ACTOR", "EventRow", "ExportFormat", "FailureListener",
    "NoteError", "NoteRow", "RecordStore", "RecordsError", "SampleRow", "SessionRow",
    "VerifyResult", "default_db_path", "new_session_id",
]

_log = logging.getLogger(__name__)


class RecordStore:
    """The records database. Use as a context manager, or call `close()` once the other
    threads using it are done (it closes every thread's connection)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, create: bool = True,
                 spool_dir: Path | None = None) -> None:
        self.path: DbTarget = as_target(path) if path is not None else default_db_path()
        # Every part gets its connections through `_conn`, so a subclass may wrap them all.
        self._db = Database(self.path, connect=self._conn)
        self._samples = Telemetry(self._db)
        self._sessions = SessionLog(self._db, self._samples)
        self._devices = DeviceTable(self._db)
        self._bookings = BookingTable(self._db)
        self._calibrations = CalibrationTable(self._db)
        self._users = UserTable(self._db)
        self._notes = NoteTable(self._db)
        self.rooms = RoomTable(self._db)
        """The rooms sharing this database: heartbeats and what each is doing."""
        self._db.open(create=create)
        # A shared database out of reach must not stop a treatment: its sessions' writes go
        # to a local spool (controller.records.spool). A local file's failure is a records
        # fault, as ever.
        self._writes = SessionWrites(self._db, self._sessions, self._samples, spool_dir)

    shared = property(lambda self: self._db.shared,
                      doc="Whether several rooms may share this database (PostgreSQL).")

    def spooled(self) -> int:
        """How many writes wait in the local journal to be written to the database."""
        return self._writes.waiting()

    def out_of_reach(self) -> bool:
        """Whether a shared database is out of reach with writes waiting in the journal."""
        return self._writes.out_of_reach()

    # -- connections and transactions (the hooks tests use to reach the file) --------------

    def _conn(self) -> Connection:
        return self._db.connection()

    def _write(self, action: str) -> AbstractContextManager[Connection]:
        return self._db.write(action)

    def _read(self, action: str) -> AbstractContextManager[Connection]:
        return self._db.read(action)

    def add_failure_listener(self, callback: FailureListener) -> None:
        """Call `callback(error)` after every write the database fails, from the thread that
        hit it (the flush job, the session worker, ...), outside the write lock. A callback
        must be quick and must not write to this store; its exceptions are logged, not raised."""
        self._db.add_failure_listener(callback)

    def remove_failure_listener(self, callback: FailureListener) -> None:
        self._db.remove_failure_listener(callback)

    def close(self) -> None:
        """Flush telemetry and close. Sessions still open stay open (as after a crash). A
        flush that fails here (the disk is still full) is logged with the number of samples
        it could not keep, not raised: the session's own outcome is what the caller reports."""
        if self._db.closed:
            return
        try:
            self.flush()
        except RecordsError as exc:
            _log.error("%s; %d telemetry sample(s) could not be written before closing",
                       exc, self._samples.waiting())
        finally:
            self._writes.close()
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions and events (SessionLog) --------------------------------------------------

    def open_session(self, *, profile: str, port: str, identity: Mapping[str, Any],
                     operator: str, patient: str | None, prescription: Mapping[str, Any],
                     planned_s: float, profile_path: str = "",
                     profile_sha256: str = "") -> str:
        """Record a new open session; `prescription` is as applied, with the limits used, and
        `profile_path`/`profile_sha256` name the profile file it runs on. Refused (SpoolActive)
        while the shared database is out of reach."""
        self._writes.refuse_while_spooling()
        return self._sessions.open(
            profile=profile, port=port, identity=identity, operator=operator, patient=patient,
            prescription=prescription, planned_s=planned_s, profile_path=profile_path,
            profile_sha256=profile_sha256)

    def set_session_identity(self, session_id: str, identity: Mapping[str, Any]) -> None:
        """Record what the device reported at identification (model, serial, firmware, ...)
        on the open session."""
        self._writes.identity(session_id, identity)

    def close_session(self, session_id: str, outcome: str, reason: str,
                      stop_source: str | None, delivered_s: float,
                      dose: Mapping[str, Any] | None, *,
                      device_elapsed_s: float | None = None) -> None:
        """Close the session (its buffered telemetry is written in the same transaction);
        `device_elapsed_s` is the device's own report of its output time, kept beside the
        host-measured `delivered_s`."""
        self._writes.close_session(session_id, outcome, reason, stop_source, delivered_s, dose,
                                   device_elapsed_s)

    def mark_interrupted_sessions(self) -> list[SessionRow]:
        """Mark sessions whose controller died as interrupted. Nothing is ever resumed."""
        return self._sessions.mark_interrupted()

    def add_event(self, session_id: str, kind: str, detail: Mapping[str, Any] | None = None,
                  *, t_s: float | None = None, delivered_s: float | None = None,
                  dose: Mapping[str, Any] | None = None) -> int:
        """Commit one event now (durable on return) and return its seq.

        `t_s` defaults to monotonic seconds since `open_session` in this store. Pending telemetry
        and the event's audit entry ride along in the same transaction, at no extra fsync."""
        return self._writes.event(session_id, kind, detail,
                                  self._sessions.offset(session_id, t_s), delivered_s, dose)

    # -- telemetry (Telemetry) -------------------------------------------------------------

    def add_sample(self, session_id: str, data: Mapping[str, Any], *, t_s: float | None = None,
                   delivered_s: float | None = None,
                   dose: Mapping[str, Any] | None = None) -> None:
        """Buffer one telemetry sample. Written with the next event, at session close, by
        `flush()`, or by the first call once `SAMPLE_FLUSH_S` has passed since the last write:
        one fsync per batch instead of one per sample, at the price of losing up to that much
        telemetry (never events) in a crash.

        Raises RecordsError when the write it triggers fails (the samples stay buffered), or
        when `SAMPLE_BUFFER_MAX` samples are already waiting (this one is not kept)."""
        t = self._sessions.offset(session_id, t_s)
        if self._samples.add(session_id, t, data, delivered_s, dose):
            self.flush()

    def flush(self) -> None:
        """Write buffered telemetry now. On failure the samples stay buffered, in order, for
        the next try; the failure listeners are told and RecordsError is raised. While a shared
        database is out of reach they go to the local spool instead."""
        self._writes.flush()

    def flush_quietly(self) -> None:
        """`flush()` for a periodic job: a failure has reached the failure listeners (and the
        samples stay buffered), so it is logged in one line here, never raised to a scheduler
        that would print a traceback."""
        try:
            self.flush()
        except RecordsError as exc:
            _log.info("telemetry flush failed (kept for the next try): %s", exc)

    def get_samples(self, session_id: str) -> list[SampleRow]:
        """A session's telemetry in time order (this store's buffered samples included)."""
        self.flush()
        self._writes.settle()
        return self._samples.samples(session_id)

    # -- audit trail -----------------------------------------------------------------------

    def audit(self, actor: str, action: str, subject: str,
              detail: Mapping[str, Any] | None = None) -> int:
        """Append one audit entry; returns its id. `detail` may not use the key "rows" (row
        hashes are only written by the store itself). Spooled (id 0) while a shared database
        is out of reach."""
        return self._writes.audit(actor, action, subject, detail)

    def verify_audit(self, expect_head: str | None = None) -> VerifyResult:
        """Check the audit chain and every audited row against it (see
        `controller.records.integrity`). `expect_head`: the head hash written down earlier;
        a different head fails (a chain rewritten or cut since). Telemetry still buffered in
        this store is written first."""
        self.flush()
        self._writes.settle()
        with self._db.read("read the audit trail") as conn:
            return integrity.verify(conn, expect_head)

    # -- queries ---------------------------------------------------------------------------

    def list_sessions(self, limit: int | None = 50, patient: str | None = None,
                      profile: str | None = None) -> list[SessionRow]:
        """Newest first, without events; `limit=None` lists them all."""
        self._writes.settle()
        return self._sessions.newest_first(limit, patient, profile)

    def get_session(self, session_id: str) -> SessionRow | None:
        """One session with its events; a unique prefix of the id is enough."""
        self._writes.settle()
        return self._sessions.get(session_id)

    def export(self, fmt: ExportFormat, patient: str | None = None) -> str:
        """All sessions (oldest first): JSON with events, or CSV one row per session."""
        self._writes.settle()
        return export_sessions(self._sessions.oldest_first(patient), fmt)

    def sessions_oldest_first(self, patient: str | None = None) -> list[SessionRow]:
        """Every session (of one patient, unless None) with its events, oldest first, read in
        one snapshot (for exports)."""
        self._writes.settle()
        return self._sessions.oldest_first(patient)

    # -- clinical notes (NoteTable) --------------------------------------------------------

    def add_note(self, session_id: str, *, actor: str, body_site: str | None = None,
                 skin_before: str | None = None, skin_after: str | None = None,
                 pain_before: int | None = None, pain_after: int | None = None,
                 text: str = "") -> NoteRow:
        """Record a clinician's note on a session (a unique id prefix is enough), audited as
        `session.note`. NoteError (a ValueError) names the field refused: pain scores are whole
        numbers 0-10, texts are bounded (`notes_table`), an empty note is refused."""
        return self._notes.add_note(session_id, actor=actor, body_site=body_site,
                                    skin_before=skin_before, skin_after=skin_after,
                                    pain_before=pain_before, pain_after=pain_after, text=text)

    def notes(self, session_id: str) -> list[NoteRow]:
        """A session's notes, oldest first (the full session id)."""
        return self._notes.notes(session_id)

    # -- devices (DeviceTable) -------------------------------------------------------------

    def add_device(self, name: str, profile: str, port: str, actor: str, *,
                   serial: str | None = None, model: str | None = None,
                   profile_path: str = "", profile_sha256: str = "",
                   port_real: str | None = None, room: str | None = None) -> DeviceRow:
        return self._devices.add_device(name, profile, port, actor, serial=serial, model=model,
                                        profile_path=profile_path,
                                        profile_sha256=profile_sha256, port_real=port_real,
                                        room=room)

    def pin_device(self, name: str, *, profile: str, profile_path: str, profile_sha256: str,
                   serial: str | None, model: str | None, port: str, port_real: str | None,
                   actor: str) -> DeviceRow:
        return self._devices.pin_device(name, profile=profile, profile_path=profile_path,
                                        profile_sha256=profile_sha256, serial=serial,
                                        model=model, port=port, port_real=port_real,
                                        actor=actor)

    def remove_device(self, name: str, actor: str, reason: str = "") -> DeviceRow:
        return self._devices.remove_device(name, actor, reason)

    def devices(self, include_removed: bool = False) -> list[DeviceRow]:
        return self._devices.devices(include_removed)

    def device(self, name: str) -> DeviceRow | None:
        return self._devices.device(name)

    def device_on_port(self, port: str) -> DeviceRow | None:
        return self._devices.device_on_port(port)

    def device_on_real_port(self, real: str) -> DeviceRow | None:
        return self._devices.device_on_real_port(real)

    def device_by_identity(self, model: str, serial: str) -> DeviceRow | None:
        return self._devices.device_by_identity(model, serial)

    # -- bookings (BookingTable) -----------------------------------------------------------

    def add_booking(self, *, devices: Mapping[str, str], profile: str | None,
                    plan: str | None, settings: Mapping[str, str], modalities: Iterable[str],
                    patient: str, starts_at: datetime, duration_s: float, actor: str,
                    min_interval_s: float,
                    profiles: Mapping[str, Mapping[str, str]] | None = None) -> BookingRow:
        return self._bookings.add_booking(
            devices=devices, profile=profile, plan=plan, settings=settings,
            modalities=modalities, patient=patient, starts_at=starts_at,
            duration_s=duration_s, actor=actor, min_interval_s=min_interval_s,
            profiles=profiles)

    def bookings(self, day: date | None = None, *, patient: str | None = None,
                 device: str | None = None,
                 statuses: Iterable[str] = BOOKING_STATUSES) -> list[BookingRow]:
        return self._bookings.bookings(day, patient=patient, device=device, statuses=statuses)

    def booking(self, booking_id: int) -> BookingRow | None:
        return self._bookings.booking(booking_id)

    def cancel_booking(self, booking_id: int, actor: str, reason: str = "") -> BookingRow:
        return self._bookings.cancel_booking(booking_id, actor, reason)

    def mark_booking(self, booking_id: int, status: str, actor: str,
                     session_ids: Iterable[str] = (), note: str = "") -> BookingRow:
        return self._bookings.mark_booking(booking_id, status, actor, session_ids, note)

    # -- calibrations (CalibrationTable) ---------------------------------------------------

    def add_calibration(self, *, device: str, profile: str, technician: str, instrument: str,
                        instrument_id: str, before: Mapping[str, Any], after: Mapping[str, Any],
                        passed: bool, performed_at: datetime, next_due: date) -> int:
        return self._calibrations.add_calibration(
            device=device, profile=profile, technician=technician, instrument=instrument,
            instrument_id=instrument_id, before=before, after=after, passed=passed,
            performed_at=performed_at, next_due=next_due)

    def calibrations(self, device: str) -> list[CalibrationRow]:
        return self._calibrations.calibrations(device)

    def calibration_status(self, device: str, at: datetime) -> CalibrationStatus:
        return self._calibrations.calibration_status(device, at)

    # -- service accounts (UserTable; the rules are controller.service.accounts) -----------

    def add_user(self, name: str, role: str, password_hash: str, actor: str) -> UserRow:
        return self._users.add_user(name, role, password_hash, actor)

    def disable_user(self, name: str, actor: str) -> UserRow:
        return self._users.disable_user(name, actor)

    def set_user_password(self, name: str, password_hash: str, actor: str, *,
                          rehash: bool = False) -> UserRow:
        return self._users.set_user_password(name, password_hash, actor, rehash=rehash)

    def users(self) -> list[UserRow]:
        return self._users.users()

    def user(self, name: str) -> UserRow | None:
        return self._users.user(name)
