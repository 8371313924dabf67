"""`modctl serve`: the day's reminders, with an injected clock, the scheduler, and signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from controller.cli.serve_cmd import Reminders, serve
from controller.clinic import clock as clinic_time
from controller.records.store import RecordStore
from tests.test_devices_cli import NOW, ROLES, audit, calibrate, clinic, modctl

LOCAL = NOW.astimezone()
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{4}  ")


def at(hour: int, minute: int) -> datetime:
    return LOCAL.replace(hour=hour, minute=minute)


def book(store: RecordStore, start: datetime, device: str, patient: str) -> int:
    return store.add_booking(devices={"device": device}, profile="hc-200", plan=None,
                             settings={}, modalities=["thermal"], patient=patient,
                             starts_at=start, duration_s=600, actor="alice",
                             min_interval_s=0).id


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = clinic(tmp_path, monkeypatch)
    with RecordStore(db) as store:
        store.add_device("heat-1", "hc-200", "/dev/pts/91", "tom")
        store.add_device("heat-2", "hc-200", "/dev/pts/92", "tom")
        store.add_device("us-1", "us-300", "/dev/pts/93", "tom")
        book(store, at(9, 30), "heat-1", "P-1")
        cancelled = book(store, at(9, 0), "heat-2", "P-2")
        store.cancel_booking(cancelled, "alice")
        book(store, at(11, 0), "heat-2", "P-3")
        book(store, at(9, 30) + timedelta(days=1), "heat-2", "P-4")
    calibrate(db, "heat-1", due=LOCAL.date() + timedelta(days=5))
    calibrate(db, "heat-2", due=date(2031, 1, 1))
    return db


def once(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> int:
    monkeypatch.setattr(clinic_time, "now", lambda: moment.astimezone(UTC))
    return modctl("serve", "--once", "--operator", "frontdesk")


def test_once_prints_what_is_due_now(db: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert once(monkeypatch, at(9, 35)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    text = "\n".join(lines)
    assert len(lines) == 3, text
    assert "booking due: booking 1 at 09:30: patient P-1, heat-1" in text
    assert "modctl book start 1" in text
    assert "calibration due soon: device heat-1 (hc-200): calibration due in 5 days" in text
    assert "calibration overdue: device us-1 (us-300): it has never been calibrated" in text
    assert "P-2" not in text and "P-3" not in text and "P-4" not in text
    notes = [a for a in audit(db) if a[1] == "note.reminder"]
    assert ("frontdesk", "note.reminder", "booking/1") in notes
    assert ("frontdesk", "note.reminder", "device/us-1") in notes


def test_once_reports_a_booking_not_started_ten_minutes_after(
        db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert once(monkeypatch, at(9, 45)) == 0
    out = capsys.readouterr().out
    assert "booking overdue: booking 1 at 09:30" in out and "15 min late" in out
    assert "booking due" not in out
    with RecordStore(db) as store:
        store.mark_booking(1, "started", "alice")
    assert once(monkeypatch, at(9, 50)) == 0
    assert "booking 1" not in capsys.readouterr().out


def test_calibration_warning_days_come_from_the_roles_file(
        db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "roles.yaml").write_text(ROLES + "clinic:\n  calibration_warning_days: 3\n")
    assert once(monkeypatch, at(7, 0)) == 0
    out = capsys.readouterr().out
    assert "heat-1" not in out and "us-1" in out


def test_once_with_nothing_to_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    clinic(tmp_path, monkeypatch)
    assert modctl("serve", "--once") == 0
    assert capsys.readouterr().out.strip() == "no reminders"


def test_each_reminder_is_emitted_once_calibrations_once_a_day(db: Path) -> None:
    clock = [at(9, 31).astimezone(UTC)]
    with RecordStore(db) as store:
        reminders = Reminders(store, "serve", 14, clock=lambda: clock[0])
        assert reminders.check() == 3
        assert reminders.check() == 0
        clock[0] = at(9, 41).astimezone(UTC)
        assert reminders.check() == 1  # now overdue
        clock[0] += timedelta(days=1)
        assert reminders.check() == 3  # P-4 overdue, and the next day's calibration check


def test_serve_wakes_at_a_booking_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    db = clinic(tmp_path, monkeypatch, now=None)
    with RecordStore(db) as store:
        store.add_device("heat-1", "hc-200", "/dev/pts/91", "tom")
        calibrate(db, "heat-1", due=date.today() + timedelta(days=300),
                  on=datetime.now(UTC))
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        booking = book(store, start, "heat-1", "P-1")
        stop = threading.Event()
        runner = threading.Thread(target=serve, args=(Reminders(store, "serve", 14), stop))
        runner.start()
        out = ""
        deadline = time.monotonic() + 10
        while "booking due" not in out and time.monotonic() < deadline:
            time.sleep(0.1)
            out += capsys.readouterr().out
        stop.set()
        runner.join(5)
    assert not runner.is_alive()
    assert f"booking due: booking {booking} at" in out
    assert "serving reminders" in out


def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "MODCTL_DB": str(tmp_path / "records.sqlite3"),
           "MODCTL_ROLES": str(tmp_path / "roles.yaml")}
    (tmp_path / "roles.yaml").write_text(ROLES)
    (tmp_path / "roles.yaml").chmod(0o600)
    code = ("import sys; from tests.test_devices_cli import modctl; "
            "sys.exit(modctl('serve', '--port', '0'))")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent.parent)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("listening on http://127.0.0.1:")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
