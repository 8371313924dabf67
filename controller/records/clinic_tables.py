"""Clinic records: registered devices, bookings and calibrations, in the session records database.

This module holds what the clinic's tables share: their rows as read, the refusals, and the
stored form of times. The tables themselves are `controller.records.device_table`,
`booking_table` and `calibration_table`, each composed into `controller.records.store.RecordStore`
over its one `Database` (the same file, write lock, ``BEGIN IMMEDIATE`` transactions and audit
hash chain as the sessions). Their schema is `CLINIC_MIGRATION` in `controller.records.schema`.

Nothing here is ever deleted: a device taken out of service is marked removed (its name stays
taken, since calibrations and bookings are keyed by it), a booking is cancelled, and calibration
records are append-only like the audit trail. Every change is audited with its actor.

Every row write is audited with the row's content hash in the same transaction
(`controller.records.integrity`), so `records verify` finds a row changed or forged behind modctl's
back, such as a calibration inserted by hand.

Times are stored as UTC ISO text of one fixed form (`iso_utc`), so text order is time order and
SQL can compare them directly. `calibration_status` judges "overdue" on the clinic's local date.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from controller.records.sql import Connection, Row

BOOKING_STATUSES = ("booked", "cancelled", "started", "done")
# Bookings that hold their device's time slot and count for the patient's minimum interval.
HOLDING = ("booked", "started", "done")
# Allowed status changes. started -> booked: the session was refused before any output, so the
# booking may be started again once the cause is fixed.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "booked": ("started", "cancelled"),
    "started": ("done", "booked"),
}
# A device name is typed at the command line and printed in columns: short and plain.
DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")


class ClinicError(Exception):
    """A device, booking or calibration change is refused; the message says why."""


class BookingConflict(ClinicError):
    """The booking clashes with another (device double-booked, patient interval too short)."""


def iso_utc(moment: datetime) -> str:
    """The stored form of a time: UTC, whole seconds (a naive time is taken as local)."""
    return aware(moment).astimezone(UTC).isoformat(timespec="seconds")


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.astimezone()


def local_day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC start and end of a local calendar day (23 or 25 hours long across DST)."""
    start = datetime.combine(day, time()).astimezone()
    end = datetime.combine(day + timedelta(days=1), time()).astimezone()
    return start.astimezone(UTC), end.astimezone(UTC)


@dataclass(frozen=True)
class DeviceRow:
    name: str
    profile: str
    """A shipped profile id, or the absolute path of a profile file."""
    port: str
    serial: str | None
    registered_by: str
    registered_at: str
    removed: bool
    removed_by: str | None
    removed_at: str | None
    model: str | None = None
    """The model the device reported at registration (None for older records)."""
    profile_path: str = ""
    """The profile file pinned at registration ('' for older records)."""
    profile_sha256: str = ""
    """SHA-256 of that file then: a changed file is refused until the device is pinned again."""
    port_real: str | None = None
    """The port's resolved real path (symlinks and `.`/`//` spellings removed)."""
    room: str | None = None
    """The treatment room whose PC the device is plugged into (None: the one PC of a clinic
    on the embedded database). Only that room's clinic service holds and drives it."""


@dataclass(frozen=True)
class BookingRow:
    id: int
    devices: dict[str, str]
    """Device name by role: the plan's device roles, or `device` for a one-session booking."""
    profile: str | None
    """The device profile of a one-session booking (None for a plan booking)."""
    plan: str | None
    settings: dict[str, str]
    modalities: tuple[str, ...]
    patient: str
    starts_at: datetime
    ends_at: datetime
    duration_s: float
    status: str
    created_by: str
    created_at: str
    cancelled_by: str | None
    cancel_reason: str | None
    session_ids: tuple[str, ...]
    profiles: dict[str, dict[str, str]] = dc_field(default_factory=dict)
    """Profile by role (or "session"): {"id", "path", "sha256"} of the files booked with."""

    @property
    def device(self) -> str:
        """The (first) device booked."""
        return next(iter(self.devices.values()))


@dataclass(frozen=True)
class CalibrationRow:
    id: int
    device: str
    profile: str
    technician: str
    instrument: str
    instrument_id: str
    before: dict[str, Any]
    after: dict[str, Any]
    passed: bool
    performed_at: datetime
    next_due: date
    recorded_at: str


@dataclass(frozen=True)
class CalibrationStatus:
    device: str
    last: CalibrationRow | None
    """The newest passed calibration, or None."""
    next_due: date | None
    overdue: bool
    """At the time asked about. True when never calibrated: the caller ignores the status for a
    profile without a calibration interval."""
    reason: str


# -- rows as read (shared by the device, booking and calibration tables) ----------------------

def device_row(r: Row) -> DeviceRow:
    return DeviceRow(name=r["name"], profile=r["profile"], port=r["port"], serial=r["serial"],
                     registered_by=r["registered_by"], registered_at=r["registered_at"],
                     removed=bool(r["removed"]), removed_by=r["removed_by"],
                     removed_at=r["removed_at"], model=r["model"],
                     profile_path=r["profile_path"], profile_sha256=r["profile_sha256"],
                     port_real=r["port_real"], room=r["room"])


def booking_row(conn: Connection, r: Row) -> BookingRow:
    devices = {d["role"]: d["device"] for d in conn.execute(
        "SELECT role, device FROM booking_devices WHERE booking_id = ? ORDER BY position",
        (r["id"],))}
    return BookingRow(
        id=int(r["id"]), devices=devices, profile=r["profile"], plan=r["plan"],
        settings=json.loads(r["settings"]),
        modalities=tuple(m for m in r["modalities"].split(",") if m), patient=r["patient"],
        starts_at=datetime.fromisoformat(r["starts_at"]),
        ends_at=datetime.fromisoformat(r["ends_at"]), duration_s=float(r["duration_s"]),
        status=r["status"], created_by=r["created_by"], created_at=r["created_at"],
        cancelled_by=r["cancelled_by"], cancel_reason=r["cancel_reason"],
        session_ids=tuple(json.loads(r["session_ids"])), profiles=json.loads(r["profiles"]))


def calibration_row(r: Row) -> CalibrationRow:
    return CalibrationRow(
        id=int(r["id"]), device=r["device"], profile=r["profile"], technician=r["technician"],
        instrument=r["instrument"], instrument_id=r["instrument_id"],
        before=json.loads(r["before"]), after=json.loads(r["after"]), passed=bool(r["passed"]),
        performed_at=datetime.fromisoformat(r["performed_at"]),
        next_due=date.fromisoformat(r["next_due"]), recorded_at=r["recorded_at"])
