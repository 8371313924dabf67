"""Bookings: devices (name by role) held for a patient's session or plan, for a time window.

Double-booking a device and the patient's minimum interval per modality are checked in the
insert's own write transaction, so two clerks booking at once cannot both win. A booking is
never deleted; its status moves only along `TRANSITIONS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from typing import Any

from controller.records import integrity
from controller.records.clinic_tables import (
    BOOKING_STATUSES,
    TRANSITIONS,
    BookingConflict,
    BookingRow,
    ClinicError,
    aware,
    booking_row,
    iso_utc,
    local_day_bounds,
)
from controller.records.database import Database, RecordsConflict, append_audit, now_iso
from controller.records.integrity import dumps


class BookingTable:
    """The `bookings` and `booking_devices` tables, written through `db` (composed into
    `RecordStore`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

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
        try:
            with self._db.write("add a booking", may_conflict=True) as conn:
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
                    b = booking_row(conn, clash)
                    raise BookingConflict(
                        f"device '{clash['held']}' is already booked from "
                        f"{_local(b.starts_at)} to {_local(b.ends_at, time_only=True)} "
                        f"(booking {b.id}, patient {b.patient})")
                gap = timedelta(seconds=min_interval_s)
                for kind in kinds:
                    near = conn.execute(
                        "SELECT * FROM bookings WHERE patient = ? AND instr(modalities, ?) > 0"
                        " AND status IN ('booked', 'started', 'done') AND starts_at < ?"
                        " AND ends_at > ? ORDER BY starts_at LIMIT 1",
                        (patient, f",{kind},", iso_utc(end + gap), iso_utc(start - gap))).fetchone()
                    if near is not None:
                        b = booking_row(conn, near)
                        raise BookingConflict(
                            f"patient {patient} already has {kind} booked from "
                            f"{_local(b.starts_at)} to "
                            f"{_local(b.ends_at, time_only=True)} (booking {b.id}); the "
                            f"clinic's minimum interval between two {kind} treatments is "
                            f"{_hours(min_interval_s)}")
                cur = conn.execute(
                    "INSERT INTO bookings (profile, plan, settings, modalities, patient, starts_at,"
                    " ends_at, duration_s, status, created_by, created_at, profiles)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'booked', ?, ?, ?) RETURNING id",
                    (profile, plan, dumps(dict(settings)), f",{','.join(kinds)},", patient,
                     iso_utc(start), iso_utc(end), duration_s, actor, now_iso(), dumps(booked)))
                booking_id = int(cur.fetchone()[0])
                conn.executemany("INSERT INTO booking_devices VALUES (?, ?, ?, ?)",
                                 [(booking_id, i, role, name)
                                  for i, (role, name) in enumerate(devices.items())])
                append_audit(conn, actor, "booking.add", f"booking/{booking_id}",
                             {"devices": dict(devices), "profile": profile, "plan": plan,
                              "settings": dict(settings), "patient": patient,
                              "starts_at": iso_utc(start), "duration_s": duration_s,
                              "profiles": booked},
                             [integrity.ref(conn, "bookings", booking_id)])
                return booking_row(conn, conn.execute("SELECT * FROM bookings WHERE id = ?",
                                                      (booking_id,)).fetchone())
        except RecordsConflict as exc:  # the database's own rule, whichever room booked
            raise BookingConflict(f"device(s) {', '.join(names)} cannot be booked from "
                                  f"{_local(start)} to {_local(end, time_only=True)}: the "
                                  f"database refused it ({exc})") from None

    def bookings(self, day: date | None = None, *, patient: str | None = None,
                 device: str | None = None,
                 statuses: Iterable[str] = BOOKING_STATUSES) -> list[BookingRow]:
        """Bookings starting on that local day (all when None), earliest first."""
        lo, hi = ("", "~") if day is None else tuple(iso_utc(t) for t in local_day_bounds(day))
        params: dict[str, Any] = {"lo": lo, "hi": hi, "patient": patient, "device": device}
        params.update({f"s{i}": status for i, status in enumerate(statuses)})
        marks = ", ".join(f":{k}" for k in params if k.startswith("s") and k[1:].isdigit())
        with self._db.read("list bookings") as conn:
            rows = conn.execute(
                "SELECT * FROM bookings b WHERE starts_at >= :lo AND starts_at < :hi"
                " AND (:patient IS NULL OR patient = :patient)"
                f" AND status IN ({marks or 'NULL'}) AND (:device IS NULL OR EXISTS"
                " (SELECT 1 FROM booking_devices d WHERE d.booking_id = b.id"
                " AND d.device = :device)) ORDER BY starts_at, id", params).fetchall()
            return [booking_row(conn, r) for r in rows]

    def booking(self, booking_id: int) -> BookingRow | None:
        with self._db.read("read a booking") as conn:
            row = conn.execute("SELECT * FROM bookings WHERE id = ?", (booking_id,)).fetchone()
            return None if row is None else booking_row(conn, row)

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
        with self._db.write("change a booking") as conn:
            row = conn.execute("SELECT * FROM bookings WHERE id = ?", (booking_id,)).fetchone()
            if row is None:
                raise ClinicError(f"there is no booking {booking_id}")
            old = booking_row(conn, row)
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
                             (status, dumps(list(ids)), booking_id))
            action = "booking.cancel" if status == "cancelled" else f"booking.{status}"
            append_audit(conn, actor, action, f"booking/{booking_id}",
                         {"from": old.status, "to": status, "note": note,
                          "session_ids": list(session_ids)},
                         [integrity.ref(conn, "bookings", booking_id)])
            return booking_row(conn, conn.execute("SELECT * FROM bookings WHERE id = ?",
                                                  (booking_id,)).fetchone())


def _local(moment: datetime, time_only: bool = False) -> str:
    return moment.astimezone().strftime("%H:%M" if time_only else "%Y-%m-%d %H:%M")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h"
