"""The records package's shape (issue 11 §3, §4): `RecordStore` composes its parts over one
`Database` instead of inheriting a mixin, every part writes through the store's one connection
hook and write lock, and no module of the package is over the ~400-line aim."""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from controller.records.booking_table import BookingTable
from controller.records.calibration_table import CalibrationTable
from controller.records.device_table import DeviceTable
from controller.records.store import RecordsError, RecordStore

RECORDS_DIR = Path(__file__).resolve().parents[1] / "controller" / "records"
# The layout aim of issue 11 §4: a newcomer reads a module in one sitting.
MAX_MODULE_LINES = 400
UNLIMITED_PAGES = 1_073_741_823


def test_no_records_module_is_over_the_line_aim() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in RECORDS_DIR.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_the_store_composes_its_parts_instead_of_inheriting_them() -> None:
    assert RecordStore.__mro__ == (RecordStore, object)


@pytest.mark.parametrize(("part", "names"), [
    (DeviceTable, ["add_device", "pin_device", "remove_device", "devices", "device",
                   "device_on_port", "device_on_real_port", "device_by_identity"]),
    (BookingTable, ["add_booking", "bookings", "booking", "cancel_booking", "mark_booking"]),
    (CalibrationTable, ["add_calibration", "calibrations", "calibration_status"]),
])
def test_the_store_offers_each_clinic_method_with_its_parts_signature(
        part: type, names: list[str]) -> None:
    for name in names:
        assert inspect.signature(getattr(RecordStore, name)) == \
            inspect.signature(getattr(part, name)), name


class FullDisk(RecordStore):
    """Fills the disk of every connection the store hands out, when told."""

    full = False

    def _conn(self) -> sqlite3.Connection:
        conn = super()._conn()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages if self.full else UNLIMITED_PAGES}")
        return conn


BLOB = "x" * 20_000  # larger than any free space left in the file's pages


def test_every_part_writes_through_the_stores_connection_hook(tmp_path: Path) -> None:
    heard: list[str] = []
    with FullDisk(tmp_path / "records.sqlite3") as store:
        store.add_failure_listener(lambda e: heard.append(str(e)))
        sid = store.open_session(profile="hc-200", port="/dev/a", identity={}, operator="a",
                                 patient="P-1", prescription={}, planned_s=60.0)
        store.add_device("pad", "hc-200", "/dev/b", "tech")
        store.add_sample(sid, {"blob": BLOB}, t_s=0.5)
        store.full = True
        day = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
        writes: list[Callable[[], object]] = [
            store.flush,
            lambda: store.add_event(sid, "note", {"blob": BLOB}, t_s=1.0),
            lambda: store.add_device("pad-2", "hc-200", "/dev/c" + BLOB, "tech"),
            lambda: store.add_booking(devices={"device": "pad"}, profile="hc-200", plan=None,
                                      settings={"blob": BLOB}, modalities=["thermal"],
                                      patient="P-1", starts_at=day, duration_s=600.0,
                                      actor="clerk", min_interval_s=0.0),
            lambda: store.add_calibration(device="pad", profile="hc-200", technician="t",
                                          instrument="i", instrument_id="1",
                                          before={"b": BLOB}, after={}, passed=True,
                                          performed_at=day, next_due=date(2030, 6, 1)),
            lambda: store.audit("a", "note", "x", {"blob": BLOB}),
        ]
        for write in writes:
            with pytest.raises(RecordsError, match="disk is full"):
                write()
        assert len(heard) == len(writes)
        store.full = False
        store.add_device("pad-2", "hc-200", "/dev/c", "tech")
        store.close_session(sid, "completed", "end", "timer", 60.0, None)
        assert [s.data for s in store.get_samples(sid)] == [{"blob": BLOB}]  # kept, then written
        assert store.verify_audit().ok
