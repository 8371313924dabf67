"""Devices, bookings and calibrations in the records database; the calibration gate."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from controller.calibration.gate import check_calibration
from controller.profiles.loader import resolve_profile
from controller.profiles.model import Profile
from controller.records import store as records
from controller.records.clinic_tables import BookingConflict, ClinicError
from controller.records.store import RecordStore

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)
HOUR = 3600.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "records.sqlite3"


@pytest.fixture
def store(db: Path) -> Iterator[RecordStore]:
    with RecordStore(db) as s:
        s.add_device("heat-1", "hc-200", "/dev/pts/91", "tom")
        s.add_device("us-1", "us-300", "/dev/pts/92", "tom")
        yield s


def hc200() -> Profile:
    return resolve_profile("hc-200").profile


def book(store: RecordStore, start: datetime, *, device: str = "heat-1", patient: str = "P-1",
         modality: str = "thermal", minutes: float = 15, interval_h: float = 4) -> int:
    return store.add_booking(
        devices={"device": device}, profile="hc-200", plan=None,
        settings={"temperature_c": "40"}, modalities=[modality], patient=patient,
        starts_at=start, duration_s=minutes * 60, actor="alice",
        min_interval_s=interval_h * HOUR).id


def calibrate(store: RecordStore, device: str = "heat-1", *, passed: bool = True,
              on: datetime = T0 - timedelta(days=30), due: date = date(2031, 1, 1)) -> int:
    return store.add_calibration(
        device=device, profile="hc-200", technician="tom", instrument="thermometer",
        instrument_id="TH-7", before={"gain": 1.02}, after={"gain": 1.0}, passed=passed,
        performed_at=on, next_due=due)


def actions(store: RecordStore) -> list[tuple[str, str, str]]:
    with store._read("test") as conn:
        return [(r["actor"], r["action"], r["subject"])
                for r in conn.execute("SELECT * FROM audit ORDER BY id")]


# -- schema --------------------------------------------------------------------------------

def test_an_older_database_is_migrated_and_keeps_its_sessions(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    for statement in records.MIGRATIONS[0]:
        conn.execute(statement)
    conn.close()
    with RecordStore(db) as s:
        sid = s.open_session(profile="hc-200", port="/dev/pts/1", identity={}, operator="a",
                             patient="P-1", prescription={}, planned_s=1.0)
        s.add_device("heat-9", "hc-200", "/dev/pts/1", "tom")
        assert s.get_session(sid) is not None and s.device("heat-9") is not None
    version = sqlite3.connect(db).execute("SELECT version FROM schema_version").fetchone()[0]
    assert version == records.SCHEMA_VERSION == 6


# -- devices -------------------------------------------------------------------------------

def test_devices_are_registered_listed_and_removed_never_deleted(store: RecordStore,
                                                                 db: Path) -> None:
    assert [d.name for d in store.devices()] == ["heat-1", "us-1"]
    assert store.device_on_port("/dev/pts/91").name == "heat-1"  # type: ignore[union-attr]
    removed = store.remove_device("us-1", "tom", "sent for repair")
    assert removed.removed and removed.removed_by == "tom"
    assert [d.name for d in store.devices()] == ["heat-1"]
    assert [d.name for d in store.devices(include_removed=True)] == ["heat-1", "us-1"]
    assert store.device_on_port("/dev/pts/92") is None
    with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
        sqlite3.connect(db).execute("DELETE FROM devices")
    assert ("tom", "device.remove", "device/us-1") in actions(store)
    assert store.verify_audit().ok


def test_device_registration_refusals(store: RecordStore) -> None:
    with pytest.raises(ClinicError, match="'heat-1' is already registered"):
        store.add_device("heat-1", "hc-200", "/dev/pts/77", "tom")
    with pytest.raises(ClinicError, match="already the port of device 'heat-1'"):
        store.add_device("heat-2", "hc-200", "/dev/pts/91", "tom")
    with pytest.raises(ClinicError, match="device name 'a b'"):
        store.add_device("a b", "hc-200", "/dev/pts/70", "tom")
    store.remove_device("us-1", "tom")
    with pytest.raises(ClinicError, match="names are never reused"):
        store.add_device("us-1", "us-300", "/dev/pts/92", "tom")
    with pytest.raises(ClinicError, match="not registered"):
        store.remove_device("nothing", "tom")


def test_a_device_with_bookings_to_run_cannot_be_removed(store: RecordStore) -> None:
    booking = book(store, T0)
    with pytest.raises(ClinicError, match=f"still has bookings {booking}"):
        store.remove_device("heat-1", "tom")
    store.cancel_booking(booking, "alice")
    assert store.remove_device("heat-1", "tom").removed


# -- bookings ------------------------------------------------------------------------------

def test_overlapping_bookings_of_a_device_are_refused(store: RecordStore) -> None:
    first = book(store, T0)
    with pytest.raises(BookingConflict, match=f"'heat-1' is already booked .*booking {first}"):
        book(store, T0 + timedelta(minutes=10), patient="P-2")
    book(store, T0 + timedelta(minutes=15), patient="P-2")  # back to back is fine
    book(store, T0 + timedelta(minutes=5), device="us-1", patient="P-3", modality="ultrasound")
    store.cancel_booking(first, "alice", "patient ill")
    book(store, T0 - timedelta(minutes=5), patient="P-4")  # a cancelled booking frees its slot


def test_same_modality_for_a_patient_needs_the_minimum_interval(store: RecordStore) -> None:
    book(store, T0)
    with pytest.raises(BookingConflict, match=r"minimum interval between two thermal .* 4 h"):
        book(store, T0 + timedelta(hours=3), minutes=10)
    book(store, T0 + timedelta(minutes=15, hours=4))  # 4 h after the first one ends
    book(store, T0 + timedelta(hours=1), device="us-1", modality="ultrasound")
    book(store, T0 + timedelta(hours=1), patient="P-2")  # another patient


def test_a_plan_booking_holds_every_device_and_modality(store: RecordStore) -> None:
    plan = store.add_booking(
        devices={"heat": "heat-1", "ultrasound": "us-1"}, profile=None, plan="low-back-pain",
        settings={}, modalities=["thermal", "ultrasound", "thermal"], patient="P-1",
        starts_at=T0, duration_s=HOUR, actor="alice", min_interval_s=4 * HOUR)
    assert plan.devices == {"heat": "heat-1", "ultrasound": "us-1"}
    assert plan.modalities == ("thermal", "ultrasound") and plan.device == "heat-1"
    with pytest.raises(BookingConflict, match="'us-1' is already booked"):
        book(store, T0 + timedelta(minutes=30), device="us-1", patient="P-2",
             modality="ultrasound")
    with pytest.raises(BookingConflict, match="P-1 already has ultrasound"):
        book(store, T0 + timedelta(hours=2), device="us-1", modality="ultrasound")
    assert [b.id for b in store.bookings(device="us-1")] == [plan.id]


def test_bookings_by_local_day_and_status_changes(store: RecordStore) -> None:
    first = book(store, T0)
    second = book(store, T0 + timedelta(days=1), patient="P-2")
    day = T0.astimezone().date()
    assert [b.id for b in store.bookings(day)] == [first]
    assert [b.id for b in store.bookings()] == [first, second]
    assert store.bookings(day + timedelta(days=2)) == []
    store.mark_booking(first, "started", "alice")
    done = store.mark_booking(first, "done", "alice", ["01SESSION"])
    assert done.status == "done" and done.session_ids == ("01SESSION",)
    with pytest.raises(ClinicError, match="is done; it cannot become cancelled"):
        store.cancel_booking(first, "alice")
    with pytest.raises(ClinicError, match="there is no booking 99"):
        store.mark_booking(99, "started", "alice")
    cancelled = store.cancel_booking(second, "bob", "no show")
    assert (cancelled.cancelled_by, cancelled.cancel_reason) == ("bob", "no show")
    with pytest.raises(ClinicError, match="already cancelled"):
        store.cancel_booking(second, "bob")
    audit = actions(store)
    assert ("bob", "booking.cancel", f"booking/{second}") in audit
    assert ("alice", "booking.done", f"booking/{first}") in audit
    assert store.verify_audit().ok


def test_two_stores_booking_the_same_slot_at_once_cannot_both_win(store: RecordStore,
                                                                  db: Path) -> None:
    results: list[str] = []
    barrier = threading.Barrier(4)

    def attempt(patient: str) -> None:
        with RecordStore(db) as other:
            barrier.wait()
            try:
                book(other, T0, patient=patient)
                results.append("booked")
            except BookingConflict:
                results.append("refused")

    threads = [threading.Thread(target=attempt, args=(f"P-{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["booked", "refused", "refused", "refused"]


# -- calibrations --------------------------------------------------------------------------

def test_calibrations_are_recorded_newest_first_and_append_only(store: RecordStore,
                                                                db: Path) -> None:
    old = calibrate(store, on=T0 - timedelta(days=400), due=date(2029, 6, 1))
    new = calibrate(store, on=T0 - timedelta(days=10))
    rows = store.calibrations("heat-1")
    assert [r.id for r in rows] == [new, old]
    assert rows[0].before == {"gain": 1.02} and rows[0].instrument_id == "TH-7"
    assert store.calibrations("us-1") == []
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        sqlite3.connect(db).execute("UPDATE calibrations SET passed = 1")
    assert ("tom", "calibration.record", f"calibration/{new}") in actions(store)
    with pytest.raises(ClinicError, match="next_due 2020-01-01 is before"):
        calibrate(store, due=date(2020, 1, 1))
    with pytest.raises(ClinicError, match="instrument_id: empty"):
        store.add_calibration(device="heat-1", profile="hc-200", technician="tom",
                              instrument="x", instrument_id=" ", before={}, after={},
                              passed=True, performed_at=T0, next_due=date(2031, 1, 1))


def test_calibration_status(store: RecordStore) -> None:
    never = store.calibration_status("heat-1", T0)
    assert never.overdue and never.last is None and "never been calibrated" in never.reason
    calibrate(store, due=date(2030, 3, 10))
    due_day = datetime(2030, 3, 10, 12, 0).astimezone()
    assert not store.calibration_status("heat-1", due_day).overdue  # usable on its due date
    late = store.calibration_status("heat-1", due_day + timedelta(days=1))
    assert late.overdue and "was due on 2030-03-10" in late.reason
    assert late.next_due == date(2030, 3, 10)
    calibrate(store, passed=False, on=T0 - timedelta(days=1))
    failed = store.calibration_status("heat-1", T0)
    assert failed.overdue and "failed" in failed.reason and failed.last is not None


# -- the gate before any output ------------------------------------------------------------

def test_calibration_gate(store: RecordStore) -> None:
    profile = hc200()
    assert check_calibration(store, profile, "/dev/pts/55", T0) is None  # not registered
    refusal = check_calibration(store, profile, "/dev/pts/55", T0, require_registered=True)
    assert refusal is not None and "no registered device on /dev/pts/55" in refusal
    by_port = check_calibration(store, profile, "/dev/pts/91", T0)
    assert by_port is not None and "'heat-1' (hc-200) is out of calibration" in by_port
    assert "never been calibrated" in by_port and "every 365 days" in by_port
    calibrate(store)
    assert check_calibration(store, profile, "/dev/pts/91", T0) is None
    assert check_calibration(store, profile, "heat-1", T0) is None
    wrong = check_calibration(store, profile, "us-1", T0)
    assert wrong is not None and "registered as a us-300, not a hc-200" in wrong
    no_interval = profile.model_copy(update={"calibration": None})
    store.add_device("heat-2", "hc-200", "/dev/pts/93", "tom")
    # The requirement comes from the profile the device was registered with, not from the
    # one the command names (issue 10 item 3): a copy without `calibration:` lifts nothing.
    lifted = check_calibration(store, no_interval, "heat-2", T0)
    assert lifted is not None and "its registered profile requires calibration" in lifted
    store.remove_device("heat-2", "tom")
    gone = check_calibration(store, profile, "heat-2", T0)
    assert gone is not None and "taken out of service" in gone


# -- schema 3: device identity, pinned profiles, booked profile files ----------------------

def test_devices_by_identity_and_real_port_and_pinning(store: RecordStore) -> None:
    dev = store.add_device("heat-7", "hc-200", "/dev/serial/by-id/usb-HC", "tom", serial="S7",
                           model="HC-200", profile_path="/p/hc.yaml", profile_sha256="aa" * 32,
                           port_real="/dev/ttyUSB0")
    assert (dev.model, dev.profile_sha256, dev.port_real) == ("HC-200", "aa" * 32,
                                                              "/dev/ttyUSB0")
    assert store.device_by_identity("HC-200", "S7") == dev
    assert store.device_on_real_port("/dev/ttyUSB0") == dev
    assert store.device_by_identity("HC-200", "S8") is None
    with pytest.raises(ClinicError, match="already the port of device 'heat-7'"):
        store.add_device("heat-8", "hc-200", "/dev/ttyUSB0", "tom")
    with pytest.raises(ClinicError, match="serial S7 is already registered as device 'heat-7'"):
        store.add_device("heat-8", "hc-200", "/dev/pts/77", "tom", serial="S7", model="HC-200")
    pinned = store.pin_device("heat-7", profile="hc-200", profile_path="/p/hc.yaml",
                              profile_sha256="bb" * 32, serial="S7", model="HC-200",
                              port="/dev/ttyUSB1", port_real="/dev/ttyUSB1", actor="tina")
    assert (pinned.profile_sha256, pinned.port, pinned.registered_by) == \
        ("bb" * 32, "/dev/ttyUSB1", "tom")
    assert store.device_on_real_port("/dev/ttyUSB0") is None
    assert ("tina", "device.pin", "device/heat-7") in actions(store)
    store.remove_device("heat-7", "tom")
    assert store.device_by_identity("HC-200", "S7") is None
    with pytest.raises(ClinicError, match="removed"):
        store.pin_device("heat-7", profile="hc-200", profile_path="", profile_sha256="",
                         serial=None, model=None, port="/dev/x", port_real=None, actor="tina")
    assert store.verify_audit().ok


def test_a_booking_keeps_its_profile_files(store: RecordStore) -> None:
    files = {"session": {"id": "hc-200", "path": "/p/hc.yaml", "sha256": "cc" * 32}}
    b = store.add_booking(devices={"device": "heat-1"}, profile="hc-200", plan=None,
                          settings={}, modalities=["thermal"], patient="P-001",
                          starts_at=datetime(2030, 1, 1, 9, tzinfo=UTC), duration_s=600.0,
                          actor="bob", min_interval_s=0.0, profiles=files)
    assert b.profiles == files and store.booking(b.id).profiles == files  # type: ignore[union-attr]
    assert store.verify_audit().ok
