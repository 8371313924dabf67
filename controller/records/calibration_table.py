"""Calibration records (append-only, audited) and whether a device is in calibration.

"Overdue" is judged on the clinic's local date: a device may be used through its due date and is
overdue from the day after; the newest calibration failing puts it out of calibration.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from controller.records import integrity
from controller.records.clinic_tables import (
    CalibrationRow,
    CalibrationStatus,
    ClinicError,
    aware,
    calibration_row,
    iso_utc,
)
from controller.records.database import Database, append_audit, now_iso
from controller.records.integrity import dumps


class CalibrationTable:
    """The `calibrations` table, written through `db` (composed into `RecordStore`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

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
        with self._db.write("record a calibration") as conn:
            cur = conn.execute(
                "INSERT INTO calibrations (device, profile, technician, instrument,"
                " instrument_id, before, after, passed, performed_at, next_due, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (device, profile, technician, instrument, instrument_id, dumps(dict(before)),
                 dumps(dict(after)), int(passed), iso_utc(done), next_due.isoformat(),
                 now_iso()))
            cal_id = int(cur.fetchone()[0])
            append_audit(conn, technician, "calibration.record", f"calibration/{cal_id}",
                         {"device": device, "profile": profile, "passed": passed,
                          "instrument": instrument, "instrument_id": instrument_id,
                          "before": dict(before), "after": dict(after),
                          "performed_at": iso_utc(done), "next_due": next_due.isoformat()},
                         [integrity.ref(conn, "calibrations", cal_id)])
            return cal_id

    def calibrations(self, device: str) -> list[CalibrationRow]:
        """Every calibration of the device, newest first."""
        with self._db.read("read calibrations") as conn:
            rows = conn.execute("SELECT * FROM calibrations WHERE device = ?"
                                " ORDER BY performed_at DESC, id DESC", (device,)).fetchall()
        return [calibration_row(r) for r in rows]

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
