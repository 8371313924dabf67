"""A records failure mid-session is a fault: the output stops, exit 5, reason named, no
traceback (issue 10 item 4). The disk "fills" for real: SQLite refuses to grow the file
(PRAGMA max_page_count), and the failure first shows in the periodic flush job, which runs
on APScheduler's thread, not the session worker's.

Before the fix the flush job's failure reached only APScheduler's log (a traceback on
stderr), the batch was dropped, and the output ran to its planned end: "completed", exit 0.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from controller.records.store import RecordStore
from controller.session.scheduling import every, make_scheduler
from tests.conftest import SimFactory
from tests.session_helpers import history, make_session

PLANNED_S = 12.0
FULL_AFTER_S = 1.0
FLUSH_PERIOD_S = 0.25


class FillingDisk(RecordStore):
    """A records store whose disk fills when told: no write may grow the file."""

    full = False

    def _conn(self) -> sqlite3.Connection:
        conn = super()._conn()
        if self.full:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn


@pytest.mark.parametrize("pid", ["us-300", "hc-200"])
def test_a_full_disk_mid_session_stops_the_output_as_a_records_fault(
        pid: str, sim_device: SimFactory, tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    device = sim_device(pid)
    with FillingDisk(tmp_path / "records.sqlite3") as store:
        session = make_session(pid, device, PLANNED_S, store=store)
        scheduler = make_scheduler()
        every(scheduler, FLUSH_PERIOD_S, store.flush_quietly, "records flush")
        scheduler.start()
        try:
            session.start()
            deadline = time.monotonic() + 5
            while session.t_start is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(FULL_AFTER_S)
            store.full = True
            filled = time.monotonic()
            report = session.wait(PLANNED_S + 10)
        finally:
            scheduler.shutdown(wait=True)
    assert report is not None
    assert report.outcome == "fault" and report.exit_status == 5, report.reason
    assert "records failed" in report.reason
    changes = history(device)
    off = next(c for c in changes if not c.on and c.t > changes[0].t)
    # Stopped long before the planned end (a page of telemetry fills in a few seconds).
    assert off.t - filled < PLANNED_S - FULL_AFTER_S - 3
    assert off.cause != "timer"
    assert "Traceback" not in capfd.readouterr().err
