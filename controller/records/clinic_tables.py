"""Clinic records: registered devices, bookings and calibrations, in the session records database.

`ClinicRecords` is a mixin of `controller.records.store.RecordStore`: the same database file,
the same per-thread connections, the same write lock and ``BEGIN IMMEDIATE`` transactions, the
same audit hash chain. Its tables come from `CLINIC_MIGRATION`, appended to `records.MIGRATIONS`.

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
import sqlite3
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.records import integrity

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

CLINIC_MIGRATION: tuple[str, ...] = (
    """CREATE TABLE devices (
        name TEXT PRIMARY KEY, profile TEXT NOT NULL, port TEXT NOT NULL, serial TEXT,
        registered_by TEXT NOT NULL, registered_at TEXT NOT NULL,
        removed INTEGER NOT NULL DEFAULT 0, removed_by TEXT, removed_at TEXT)""",
    """CREATE TRIGGER devices_no_delete BEFORE DELETE ON devices
        BEGIN SELECT RAISE(ABORT, 'devices are never deleted: mark them removed'); END""",
    # A booking holds one device (a session) or every device of a plan, for its whole window.
    """CREATE TABLE bookings (
        id INTEGER PRIMARY KEY AUTOINCREMENT, profile TEXT, plan TEXT, settings TEXT NOT NULL,
        modalities TEXT NOT NULL, patient TEXT NOT NULL, starts_at TEXT NOT NULL,
        ends_at TEXT NOT NULL, duration_s REAL NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('booked', 'cancelled', 'started', 'done')),
        created_by TEXT NOT NULL, created_at TEXT NOT NULL, cancelled_by TEXT,
        cancel_reason TEXT, session_ids TEXT NOT NULL DEFAULT '[]',
        CHECK ((profile IS NULL) <> (plan IS NULL)))""",
    "CREATE INDEX bookings_start ON bookings (starts_at)",
    "CREATE INDEX bookings_patient ON bookings (patient, starts_at)",
    """CREATE TABLE booking_devices (
        booking_id INTEGER NOT NULL REFERENCES bookings (id), position INTEGER NOT NULL,
        role TEXT NOT NULL, device TEXT NOT NULL REFERENCES devices (name),
        PRIMARY KEY (booking_id, position))""",
    "CREATE INDEX booking_devices_device ON booking_devices (device)",
    """CREATE TRIGGER bookings_no_delete BEFORE DELETE ON bookings
        BEGIN SELECT RAISE(ABORT, 'bookings are never deleted: cancel them'); END""",
    """CREATE TRIGGER booking_devices_no_change BEFORE UPDATE ON booking_devices
        BEGIN SELECT RAISE(ABORT, 'the devices of a booking never change'); END""",
    """CREATE TABLE calibrations (
        id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, profile TEXT NOT NULL,
        technician TEXT NOT NULL, instrument TEXT NOT NULL, instrument_id TEXT NOT NULL,
        before TEXT NOT NULL, after TEXT NOT NULL, passed INTEGER NOT NULL,
        performed_at TEXT NOT NULL, next_due TEXT NOT NULL, recorded_at TEXT NOT NULL)""",
    "CREATE INDEX calibrations_device ON calibrations (device, performed_at)",
    """CREATE TRIGGER calibrations_no_update BEFORE UPDATE ON calibrations
        BEGIN SELECT RAISE(ABORT, 'calibration records are append-only'); END""",
    """CREATE TRIGGER calibrations_no_delete BEFORE DELETE ON calibrations
        BEGIN SELECT RAISE(ABORT, 'calibration records are append-only'); END""",
)

# Schema 3 (in records.MIGRATIONS): what a device is (model, serial read at identification, the
# resolved port) and which profile file it was registered with; which profile files a booking
# was made with.
CLINIC_IDENTITY_MIGRATION: tuple[str, ...] = (
    "ALTER TABLE devices ADD COLUMN model TEXT",
    "ALTER TABLE devices ADD COLUMN profile_path TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE devices ADD COLUMN profile_sha256 TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE devices ADD COLUMN port_real TEXT",
    "CREATE INDEX devices_identity ON devices (model, serial)",
    "CREATE INDEX devices_port_real ON devices (port_real)",
    "ALTER TABLE bookings ADD COLUMN profiles TEXT NOT NULL DEFAULT '{}'",
)


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


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


class ClinicRecords:
    """Devices, bookings and calibrations; mixed into `RecordStore`."""

    if TYPE_CHECKING:  # provided by RecordStore
        path: Path

        def _write(self, action: str) -> AbstractContextManager[sqlite3.Connection]: ...

        def _read(self, action: str) -> AbstractContextManager[sqlite3.Connection]: ...

        @classmethod
        def _append_audit(cls, conn: sqlite3.Connection, actor: str, action: str,
                          subject: str, detail: Mapping[str, Any],
                          rows: list[dict[str, Any]] | None = None,
                          entry_id: int | None = None) -> int: ...

    # -- devices ---------------------------------------------------------------------------

    def add_device(self, name: str, profile: str, port: str, actor: str, *,
                   serial: str | None = None, model: str | None = None,
                   profile_path: str = "", profile_sha256: str = "",
                   port_real: str | None = None) -> DeviceRow:
        """Register a device; `profile_path`/`profile_sha256` pin its profile file, `model` and
        `serial` are what it reported, `port_real` the port's resolved real path."""
        if not DEVICE_NAME.fullmatch(name):
            raise ClinicError(f"device name '{name}': use 1-40 letters, digits, '.', '_' or "
                              "'-', starting with a letter or digit")
        if not port.strip():
            raise ClinicError("port: empty; give the device path or pyserial URL")
        with self._write("register a device") as conn:
            old = conn.execute("SELECT * FROM devices WHERE name = ?", (name,)).fetchone()
            if old is not None:
                state = (f"was removed on {old['removed_at'][:10]}; names are never reused, "
                         "because calibrations and bookings are kept by name"
                         if old["removed"] else "is already registered")
                raise ClinicError(f"device '{name}' {state}")
            self._refuse_clash(conn, name, port, port_real, model, serial)
            conn.execute("INSERT INTO devices (name, profile, port, serial, registered_by,"
                         " registered_at, model, profile_path, profile_sha256, port_real)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (name, profile, port, serial, actor, _now(), model, profile_path,
                          profile_sha256, port_real))
            self._append_audit(conn, actor, "device.add", f"device/{name}",
                               {"profile": profile, "port": port, "serial": serial,
                                "model": model, "profile_path": profile_path,
                                "profile_sha256": profile_sha256, "port_real": port_real},
                               [integrity.ref(conn, "devices", name)])
            return _device(conn.execute("SELECT * FROM devices WHERE name = ?",
                                        (name,)).fetchone())

    @staticmethod
    def _refuse_clash(conn: sqlite3.Connection, name: str, port: str, port_real: str | None,
                      model: str | None, serial: str | None) -> None:
        """Another registered device on the same port (by name or real path) or with the same
        reported identity is refused: the gate could not tell them apart."""
        other = conn.execute(
            "SELECT name FROM devices WHERE removed = 0 AND name <> ?2 AND (port IN (?1, ?3)"
            " OR port_real IN (?1, ?3))", (port, name, port_real)).fetchone()
        if other is not None:
            raise ClinicError(f"port {port} is already the port of device '{other[0]}'; "
                              "remove that device first")
        if model and serial:
            twin = conn.execute("SELECT name FROM devices WHERE removed = 0 AND name <> ?"
                                " AND model = ? AND serial = ?",
                                (name, model, serial)).fetchone()
            if twin is not None:
                raise ClinicError(f"a {model} with serial {serial} is already registered as "
                                  f"device '{twin[0]}'")

    def pin_device(self, name: str, *, profile: str, profile_path: str, profile_sha256: str,
                   serial: str | None, model: str | None, port: str, port_real: str | None,
                   actor: str) -> DeviceRow:
        """A technician registers the device again (its profile file changed, or it moved):
        the new profile hash, identity and port replace the old ones, audited "device.pin"."""
        if not port.strip():
            raise ClinicError("port: empty; give the device path or pyserial URL")
        with self._write("pin a device") as conn:
            row = conn.execute("SELECT * FROM devices WHERE name = ?", (name,)).fetchone()
            if row is None or row["removed"]:
                raise ClinicError(f"device '{name}' is not registered"
                                  + (" (it was removed)" if row is not None else ""))
            self._refuse_clash(conn, name, port, port_real, model, serial)
            conn.execute("UPDATE devices SET profile = ?, profile_path = ?, profile_sha256 = ?,"
                         " serial = ?, model = ?, port = ?, port_real = ? WHERE name = ?",
                         (profile, profile_path, profile_sha256, serial, model, port,
                          port_real, name))
            self._append_audit(conn, actor, "device.pin", f"device/{name}",
                               {"profile": profile, "port": port, "serial": serial,
                                "model": model, "profile_path": profile_path,
                                "profile_sha256": profile_sha256, "port_real": port_real,
                                "was": {"profile": row["profile"],
                                        "profile_sha256": row["profile_sha256"],
                                        "port": row["port"], "serial": row["serial"]}},
                               [integrity.ref(conn, "devices", name)])
            return _device(conn.execute("SELECT * FROM devices WHERE name = ?",
                                        (name,)).fetchone())

    def remove_device(self, name: str, actor: str, reason: str = "") -> DeviceRow:
        """Take a device out of service; refused while it has bookings still to run."""
        with self._write("remove a device") as conn:
            row = conn.execute("SELECT * FROM devices WHERE name = ?", (name,)).fetchone()
            if row is None or row["removed"]:
                raise ClinicError(f"device '{name}' is not registered"
                                  + (" (already removed)" if row is not None else ""))
            pending = [str(r[0]) for r in conn.execute(
                "SELECT b.id FROM bookings b JOIN booking_devices d ON d.booking_id = b.id"
                " WHERE d.device = ? AND b.status IN ('booked', 'started') ORDER BY b.starts_at",
                (name,))]
            if pending:
                raise ClinicError(f"device '{name}' still has bookings {', '.join(pending)}; "
                                  "cancel them first (modctl book cancel ID)")
            conn.execute("UPDATE devices SET removed = 1, removed_by = ?, removed_at = ?"
                         " WHERE name = ?", (actor, _now(), name))
            self._append_audit(conn, actor, "device.remove", f"device/{name}",
                               {"reason": reason}, [integrity.ref(conn, "devices", name)])
            return _device(conn.execute("SELECT * FROM devices WHERE name = ?",
                                        (name,)).fetchone())

    def devices(self, include_removed: bool = False) -> list[DeviceRow]:
        with self._read("list devices") as conn:
            rows = conn.execute("SELECT * FROM devices WHERE ? OR removed = 0 ORDER BY name",
                                (include_removed,)).fetchall()
        return [_device(r) for r in rows]

    def device(self, name: str) -> DeviceRow | None:
        """The device of that name, removed ones included (check `removed`)."""
        with self._read("read a device") as conn:
            row = conn.execute("SELECT * FROM devices WHERE name = ?", (name,)).fetchone()
        return None if row is None else _device(row)

    def device_on_port(self, port: str) -> DeviceRow | None:
        """The registered (not removed) device on this port, if any."""
        with self._read("read a device") as conn:
            row = conn.execute("SELECT * FROM devices WHERE port = ? AND removed = 0",
                               (port,)).fetchone()
        return None if row is None else _device(row)

    def device_on_real_port(self, real: str) -> DeviceRow | None:
        """The registered (not removed) device whose port resolves to `real`, if any."""
        with self._read("read a device") as conn:
            row = conn.execute("SELECT * FROM devices WHERE removed = 0 AND port_real = ?"
                               " ORDER BY name LIMIT 1", (real,)).fetchone()
        return None if row is None else _device(row)

    def device_by_identity(self, model: str, serial: str) -> DeviceRow | None:
        """The registered (not removed) device that reported this model and serial number."""
        with self._read("read a device") as conn:
            row = conn.execute("SELECT * FROM devices WHERE removed = 0 AND model = ?"
                               " AND serial = ? ORDER BY name LIMIT 1",
                               (model, serial)).fetchone()
        return None if row is None else _device(row)

    # -- bookings --------------------------------------------------------------------------

    def add_booking(self, *, devices: Mapping[str, str], profile: str | None,
                    plan: str | None, settings: Mapping[str, str], modalities: Iterable[str],
                    patient: str, starts_at: datetime, duration_s: float, actor: str,
                    min_interval_s: float,
                    profiles: Mapping[str, Mapping[str, str]] | None = None) -> BookingRow:
        """Book devices (name by role) for a patient. Double-booking a device and the patient's
        minimum interval per modality are checked in the insert's own transaction, so two
        clerks booking at once cannot both win. Give exactly one of `profile` and `plan`.
        `profiles`: by role (or "session"), the {"id", "path", "sha256"} of the profile files
        the booking was made with."""
        if (profile is None) == (plan is None) or not devices:
            raise ClinicError("a booking is for one profile or one plan, on at least one device")
        start = aware(starts_at)
        end = start + timedelta(seconds=duration_s)
        kinds = sorted(set(modalities))
        names = list(devices.values())
        booked = {role: dict(p) for role, p in (profiles or {}).items()}
        with self._write("add a booking") as conn:
            for name in names:
                dev = conn.execute("SELECT removed FROM devices WHERE name = ?",
                                   (name,)).fetchone()
                if dev is None or dev[0]:
                    raise ClinicError(f"device '{name}' is not registered"
                                      + (" (it was removed)" if dev is not None else ""))
            clash = conn.execute(
                f"SELECT b.*, d.device AS held FROM bookings b JOIN booking_devices d"
                f" ON d.booking_id = b.id WHERE d.device IN ({', '.join('?' * len(names))})"
                " AND b.status IN ('booked', 'started') AND b.starts_at < ? AND b.ends_at > ?"
                " ORDER BY b.starts_at LIMIT 1",
                (*names, iso_utc(end), iso_utc(start))).fetchone()
            if clash is not None:
                b = _booking(conn, clash)
                raise BookingConflict(
                    f"device '{clash['held']}' is already booked from {_local(b.starts_at)} to "
                    f"{_local(b.ends_at, time_only=True)} (booking {b.id}, patient {b.patient})")
            gap = timedelta(seconds=min_interval_s)
            for kind in kinds:
                near = conn.execute(
                    "SELECT * FROM bookings WHERE patient = ? AND instr(modalities, ?) > 0"
                    " AND status IN ('booked', 'started', 'done') AND starts_at < ?"
                    " AND ends_at > ? ORDER BY starts_at LIMIT 1",
                    (patient, f",{kind},", iso_utc(end + gap), iso_utc(start - gap))).fetchone()
                if near is not None:
                    b = _booking(conn, near)
                    raise BookingConflict(
                        f"patient {patient} already has {kind} booked from "
                        f"{_local(b.starts_at)} to {_local(b.ends_at, time_only=True)} (booking "
                        f"{b.id}); the clinic's minimum interval between two {kind} "
                        f"treatments is {_hours(min_interval_s)}")
            cur = conn.execute(
                "INSERT INTO bookings (profile, plan, settings, modalities, patient, starts_at,"
                " ends_at, duration_s, status, created_by, created_at, profiles)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'booked', ?, ?, ?)",
                (profile, plan, _dumps(dict(settings)), f",{','.join(kinds)},", patient,
                 iso_utc(start), iso_utc(end), duration_s, actor, _now(), _dumps(booked)))
            booking_id = int(cur.lastrowid or 0)
            conn.executemany("INSERT INTO booking_devices VALUES (?, ?, ?, ?)",
                             [(booking_id, i, role, name)
                              for i, (role, name) in enumerate(devices.items())])
            self._append_audit(conn, actor, "booking.add", f"booking/{booking_id}",
                               {"devices": dict(devices), "profile": profile, "plan": plan,
                                "settings": dict(settings), "patient": patient,
                                "starts_at": iso_utc(start), "duration_s": duration_s,
                                "profiles": booked},
                               [integrity.ref(conn, "bookings", booking_id)])
            return _booking(conn, conn.execute("SELECT * FROM bookings WHERE id = ?",
                                               (booking_id,)).fetchone())

    def bookings(self, day: date | None = None, *, patient: str | None = None,
                 device: str | None = None,
                 statuses: Iterable[str] = BOOKING_STATUSES) -> list[BookingRow]:
        """Bookings starting on that local day (all when None), earliest first."""
        lo, hi = ("", "~") if day is None else tuple(iso_utc(t) for t in local_day_bounds(day))
        params: dict[str, Any] = {"lo": lo, "hi": hi, "patient": patient, "device": device}
        params.update({f"s{i}": status for i, status in enumerate(statuses)})
        marks = ", ".join(f":{k}" for k in params if k.startswith("s") and k[1:].isdigit())
        with self._read("list bookings") as conn:
            rows = conn.execute(
                "SELECT * FROM bookings b WHERE starts_at >= :lo AND starts_at < :hi"
                " AND (:patient IS NULL OR patient = :patient)"
                f" AND status IN ({marks or 'NULL'}) AND (:device IS NULL OR EXISTS"
                " (SELECT 1 FROM booking_devices d WHERE d.booking_id = b.id"
                " AND d.device = :device)) ORDER BY starts_at, id", params).fetchall()
            return [_booking(conn, r) for r in rows]

    def booking(self, booking_id: int) -> BookingRow | None:
        with self._read("read a booking") as conn:
            row = conn.execute("SELECT * FROM bookings WHERE id = ?", (booking_id,)).fetchone()
            return None if row is None else _booking(conn, row)

    def cancel_booking(self, booking_id: int, actor: str, reason: str = "") -> BookingRow:
        return self._set_status(booking_id, "cancelled", actor, (), reason)

    def mark_booking(self, booking_id: int, status: str, actor: str,
                     session_ids: Iterable[str] = (), note: str = "") -> BookingRow:
        """started (the clinician starts it), done (its sessions ended: their ids are kept),
        or booked again (the session was refused before any output)."""
        return self._set_status(booking_id, status, actor, tuple(session_ids), note)

    def _set_status(self, booking_id: int, status: str, actor: str,
                    session_ids: tuple[str, ...], note: str) -> BookingRow:
        if status not in BOOKING_STATUSES:
            raise ClinicError(f"booking status '{status}' is not one of "
                              f"{', '.join(BOOKING_STATUSES)}")
        with self._write("change a booking") as conn:
            row = conn.execute("SELECT * FROM bookings WHERE id = ?", (booking_id,)).fetchone()
            if row is None:
                raise ClinicError(f"there is no booking {booking_id}")
            old = _booking(conn, row)
            if status == old.status:
                raise ClinicError(f"booking {booking_id} is already {status}")
            if status not in TRANSITIONS.get(old.status, ()):
                raise ClinicError(f"booking {booking_id} is {old.status}; it cannot become "
                                  f"{status}")
            ids = (*old.session_ids, *(s for s in session_ids if s not in old.session_ids))
            if status == "cancelled":
                conn.execute("UPDATE bookings SET status = ?, cancelled_by = ?,"
                             " cancel_reason = ? WHERE id = ?",
                             (status, actor, note, booking_id))
            else:
                conn.execute("UPDATE bookings SET status = ?, session_ids = ? WHERE id = ?",
                             (status, _dumps(list(ids)), booking_id))
            action = "booking.cancel" if status == "cancelled" else f"booking.{status}"
            self._append_audit(conn, actor, action, f"booking/{booking_id}",
                               {"from": old.status, "to": status, "note": note,
                                "session_ids": list(session_ids)},
                               [integrity.ref(conn, "bookings", booking_id)])
            return _booking(conn, conn.execute("SELECT * FROM bookings WHERE id = ?",
                                               (booking_id,)).fetchone())

    # -- calibrations ----------------------------------------------------------------------

    def add_calibration(self, *, device: str, profile: str, technician: str, instrument: str,
                        instrument_id: str, before: Mapping[str, Any], after: Mapping[str, Any],
                        passed: bool, performed_at: datetime, next_due: date) -> int:
        """Record one calibration (append-only) and audit it; returns its id.

        `device` is the registered device's name; `performed_at` without a time zone is
        taken as local time."""
        for field, value in (("device", device), ("profile", profile),
                             ("technician", technician), ("instrument", instrument),
                             ("instrument_id", instrument_id)):
            if not value.strip():
                raise ClinicError(f"calibration {field}: empty")
        done = aware(performed_at)
        if next_due < done.astimezone().date():
            raise ClinicError(f"calibration next_due {next_due} is before the calibration "
                              f"itself ({done.astimezone().date()})")
        with self._write("record a calibration") as conn:
            cur = conn.execute(
                "INSERT INTO calibrations (device, profile, technician, instrument,"
                " instrument_id, before, after, passed, performed_at, next_due, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (device, profile, technician, instrument, instrument_id, _dumps(dict(before)),
                 _dumps(dict(after)), int(passed), iso_utc(done), next_due.isoformat(),
                 _now()))
            cal_id = int(cur.lastrowid or 0)
            self._append_audit(conn, technician, "calibration.record", f"calibration/{cal_id}",
                               {"device": device, "profile": profile, "passed": passed,
                                "instrument": instrument, "instrument_id": instrument_id,
                                "before": dict(before), "after": dict(after),
                                "performed_at": iso_utc(done), "next_due": next_due.isoformat()},
                               [integrity.ref(conn, "calibrations", cal_id)])
            return cal_id

    def calibrations(self, device: str) -> list[CalibrationRow]:
        """Every calibration of the device, newest first."""
        with self._read("read calibrations") as conn:
            rows = conn.execute("SELECT * FROM calibrations WHERE device = ?"
                                " ORDER BY performed_at DESC, id DESC", (device,)).fetchall()
        return [_calibration(r) for r in rows]

    def calibration_status(self, device: str, at: datetime) -> CalibrationStatus:
        """Whether the device is in calibration at `at` (on the local date of `at`).

        A device may be used through its due date and is overdue from the day after. The newest
        calibration failing puts the device out of calibration, whatever passed before it."""
        rows = self.calibrations(device)
        day = aware(at).astimezone().date()
        passed = next((r for r in rows if r.passed), None)
        if rows and not rows[0].passed:
            newest = rows[0]
            return CalibrationStatus(
                device, passed, passed.next_due if passed else None, True,
                f"its last calibration, on {newest.performed_at.astimezone().date()} by "
                f"{newest.technician}, failed")
        if passed is None:
            return CalibrationStatus(device, None, None, True, "it has never been calibrated")
        when = f"calibrated on {passed.performed_at.astimezone().date()} by {passed.technician}"
        if day > passed.next_due:
            return CalibrationStatus(device, passed, passed.next_due, True,
                                     f"its calibration was due on {passed.next_due} ({when})")
        return CalibrationStatus(device, passed, passed.next_due, False,
                                 f"{when}, next due {passed.next_due}")


# -- rows ------------------------------------------------------------------------------------

def _device(r: sqlite3.Row) -> DeviceRow:
    return DeviceRow(name=r["name"], profile=r["profile"], port=r["port"], serial=r["serial"],
                     registered_by=r["registered_by"], registered_at=r["registered_at"],
                     removed=bool(r["removed"]), removed_by=r["removed_by"],
                     removed_at=r["removed_at"], model=r["model"],
                     profile_path=r["profile_path"], profile_sha256=r["profile_sha256"],
                     port_real=r["port_real"])


def _booking(conn: sqlite3.Connection, r: sqlite3.Row) -> BookingRow:
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


def _calibration(r: sqlite3.Row) -> CalibrationRow:
    return CalibrationRow(
        id=int(r["id"]), device=r["device"], profile=r["profile"], technician=r["technician"],
        instrument=r["instrument"], instrument_id=r["instrument_id"],
        before=json.loads(r["before"]), after=json.loads(r["after"]), passed=bool(r["passed"]),
        performed_at=datetime.fromisoformat(r["performed_at"]),
        next_due=date.fromisoformat(r["next_due"]), recorded_at=r["recorded_at"])


def _local(moment: datetime, time_only: bool = False) -> str:
    return moment.astimezone().strftime("%H:%M" if time_only else "%Y-%m-%d %H:%M")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h"
