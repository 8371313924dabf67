"""`modctl book add | list | cancel | start`: booking rules, refusals, and starting a booking."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from controller.clinic import clock as clinic_time
from controller.records.store import RecordStore
from tests.conftest import SimFactory
from tests.test_devices_cli import NOW, ROLES, audit, calibrate, clinic, modctl

HEAT = ["--device", "heat-1", "--profile", "hc-200", "--set", "temperature_c=40"]


def register(db: Path, *names: tuple[str, str, str], calibrated: bool = True) -> None:
    with RecordStore(db) as store:
        for name, profile, port in names:
            store.add_device(name, profile, port, "tom")
    if calibrated:
        for name, _, _ in names:
            calibrate(db, name)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = clinic(tmp_path, monkeypatch)
    register(db, ("heat-1", "hc-200", "/dev/pts/91"), ("us-1", "us-300", "/dev/pts/92"),
             ("tens-1", "es-4", "/dev/pts/93"))
    return db


def add(*argv: str, at: str = "2030-03-04T09:30", patient: str = "P-0042",
        duration: str = "15m", operator: str = "alice") -> int:
    return modctl("book", "add", *argv, "--at", at, "--patient", patient,
                  *(["--duration", duration] if duration else []), "--operator", operator)


def test_book_list_and_times(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert add(*HEAT) == 0
    out = capsys.readouterr().out
    assert "booked 1: heat-1 2030-03-04 09:30-09:45, patient P-0042" in out
    assert add("--device", "us-1", "--profile", "us-300", "--set", "intensity_w_cm2=1.5",
               at="11:00", duration="5m", patient="P-0043") == 0  # today, local time
    assert add(*HEAT, at="2030-03-05 10:00", patient="P-0044") == 0
    with RecordStore(db) as store:
        first = store.booking(1)
        second = store.booking(2)
    assert first is not None and second is not None
    assert first.starts_at == datetime(2030, 3, 4, 9, 30).astimezone(UTC)
    assert first.starts_at.tzinfo == UTC and first.created_by == "alice"
    assert second.starts_at.astimezone().strftime("%Y-%m-%d %H:%M") == "2030-03-04 11:00"
    capsys.readouterr()
    assert modctl("book", "list") == 0  # today
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["ID", "TIME", "DEVICE", "PATIENT"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2"]
    assert lines[1].split()[1] == "09:30" and "hc-200 temperature_c=40" in lines[1]
    assert modctl("book", "list", "--day", "2030-03-05") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["3"]
    assert modctl("book", "list", "--all", "--patient", "P-0044") == 0
    assert "2030-03-05 10:00" in capsys.readouterr().out
    assert modctl("book", "list", "--day", "2030-03-09") == 0
    assert capsys.readouterr().out.strip() == "no bookings on 2030-03-09"
    assert ("alice", "booking.add", "booking/1") in audit(db)


def test_double_booking_is_refused(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert add(*HEAT) == 0
    assert add(*HEAT, at="2030-03-04T09:40", patient="P-0050") == 3
    err = capsys.readouterr().err
    assert "refused: device 'heat-1' is already booked from 2030-03-04 09:30 to 09:45 " \
           "(booking 1, patient P-0042)" in err
    assert add(*HEAT, at="2030-03-04T09:45", patient="P-0050") == 0  # back to back


def test_overdue_calibration_at_the_booked_time_is_refused(
        db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    register(db, ("heat-2", "hc-200", "/dev/pts/94"), calibrated=False)
    heat2 = ["--device", "heat-2", "--profile", "hc-200"]
    assert add(*heat2) == 3
    assert "'heat-2' (hc-200) is out of calibration: it has never been calibrated" in \
        capsys.readouterr().err
    calibrate(db, "heat-2", due=date(2030, 3, 10))
    assert add(*heat2, at="2030-03-10T17:00") == 0  # usable through its due date
    assert add(*heat2, at="2030-03-11T09:00", patient="P-0050") == 3
    err = capsys.readouterr().err
    assert "its calibration was due on 2030-03-10" in err
    assert "checked at the end of the booking, 2030-03-11 09:15" in err
    calibrate(db, "heat-2", passed=False)
    assert add(*heat2, at="2030-03-05T09:00", patient="P-0051") == 3
    assert "failed" in capsys.readouterr().err


def test_same_modality_closer_than_the_minimum_interval_is_refused(
        db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert add(*HEAT) == 0
    assert add(*HEAT, at="2030-03-04T12:00") == 3
    assert ("patient P-0042 already has thermal booked from 2030-03-04 09:30 to 09:45 "
            "(booking 1); the clinic's minimum interval between two thermal treatments is "
            "4 h") in capsys.readouterr().err
    assert add("--device", "us-1", "--profile", "us-300", "--set", "intensity_w_cm2=1",
               at="2030-03-04T10:00", duration="5m") == 0  # another modality
    assert add(*HEAT, at="2030-03-04T13:45") == 0  # 4 h after the first ended
    # The clinic may set its own interval in the roles file.
    (tmp_path / "roles.yaml").write_text(ROLES + "clinic:\n  min_interval_hours: 1\n")
    assert add(*HEAT, at="2030-03-04T15:00") == 0


def test_a_recorded_session_counts_for_the_interval(
        db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_now = datetime.now(UTC)
    monkeypatch.setattr(clinic_time, "now", lambda: real_now)
    calibrate(db, "heat-1", due=date.today() + timedelta(days=300), on=real_now)
    with RecordStore(db) as store:
        sid = store.open_session(profile="hc-200", port="/dev/pts/91", identity={},
                                 operator="alice", patient="P-0042", prescription={},
                                 planned_s=900)
        store.close_session(sid, "completed", "done", "controller", 900, {})
    later = (real_now + timedelta(hours=1)).astimezone().strftime("%Y-%m-%dT%H:%M")
    assert add(*HEAT, at=later) == 3
    assert "had a thermal session at" in capsys.readouterr().err
    assert add(*HEAT, at=later, patient="P-0043") == 0


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["--at", "2030-03-04T07:00"], 3, "--at 2030-03-04 07:00 is in the past (now 2030-03-04 "
                                      "08:00)"),
    (["--device", "heat-9"], 1, "no device 'heat-9' is registered (registered: heat-1, tens-1, "
                                "us-1)"),
    (["--patient", "Anna-Berg"], 2, "--patient 'Anna-Berg' is not a pseudonymous patient id"),
    (["--patient", "Anna Berg 1"], 2, "never a patient's name"),
    (["--set", "temperature_c=50"], 3, "prescription: temperature_c=50 is above the clinical "
                                       "limit 45"),
    (["--duration", "45m"], 3, "duration_s=2700 is above the clinical limit 1800"),
    (["--profile", "us-300"], 3, "device 'heat-1' is registered as a hc-200, not a us-300"),
    (["--at", "tomorrow"], 2, "--at 'tomorrow' is not a time"),
    (["--duration", "soon"], 2, "duration 'soon' is not understood"),
    (["--set", "temperature_c"], 2, "expected NAME=VALUE"),
    (["--operator", "tom"], 3, "operator 'tom' may not book a device: the clinician role is "
                               "needed"),
])
def test_bad_bookings_are_refused_with_the_reason(db: Path, capsys: pytest.CaptureFixture[str],
                                                  argv: list[str], status: int,
                                                  message: str) -> None:
    base = {"--device": "heat-1", "--profile": "hc-200", "--at": "2030-03-04T09:30",
            "--patient": "P-0042", "--duration": "15m", "--operator": "alice",
            "--set": "temperature_c=40"}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    assert modctl("book", "add", *[x for kv in base.items() for x in kv]) == status
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    with RecordStore(db) as store:
        assert store.bookings() == []


def test_usage_errors(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert add("--device", "heat-1", "--profile", "hc-200", duration="") == 2
    assert "--duration is required" in capsys.readouterr().err
    assert add("--device", "heat-1", "--plan", "low-back-pain", "--set", "x=1") == 2
    assert "a plan booking takes its settings from the plan" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        modctl("book", "cancel", "abc")
    assert modctl("book", "list", "--day", "4.3.2030") == 2
    assert "--day '4.3.2030' is not a day" in capsys.readouterr().err


def test_plan_bookings_hold_every_device(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = ["--plan", "low-back-pain", "--device", "heat-1", "--device", "us-1", "--device",
            "tens-1"]
    assert add(*plan, duration="") == 0
    out = capsys.readouterr().out
    # 15 + 5 + 20 min of steps, 2 min of pauses, 2 min of setup per step.
    assert "heat-1,us-1,tens-1 2030-03-04 09:30-10:18" in out and "plan low-back-pain" in out
    assert add("--device", "tens-1", "--profile", "es-4", "--set", "amplitude_ma=10",
               at="2030-03-04T10:00", patient="P-0050") == 3
    assert "'tens-1' is already booked" in capsys.readouterr().err
    assert add("--plan", "low-back-pain", "--device", "heat-1", at="2030-03-05T09:00",
               duration="") == 3
    err = capsys.readouterr().err
    assert "the plan's 'ultrasound' role needs a device with profile us-300" in err
    assert add("--plan", "no-such-plan", "--device", "heat-1", duration="") == 1
    assert "--plan no-such-plan: no such plan" in capsys.readouterr().err
    assert add(*plan, at="2030-03-05T09:00", duration="10m") == 3
    assert "shorter than the plan's own 42m" in capsys.readouterr().err


def test_cancel(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert add(*HEAT) == 0
    assert modctl("book", "cancel", "1", "--operator", "tom") == 3
    assert "the clinician role is needed" in capsys.readouterr().err
    assert modctl("book", "cancel", "1", "--reason", "patient ill", "--operator", "bob") == 0
    assert "cancelled booking 1" in capsys.readouterr().out
    assert modctl("book", "cancel", "1") == 3
    assert "booking 1 is already cancelled" in capsys.readouterr().err
    assert modctl("book", "cancel", "7") == 1  # not found
    assert "there is no booking 7" in capsys.readouterr().err
    assert add(*HEAT, patient="P-0050") == 0  # the slot is free again
    with RecordStore(db) as store:
        cancelled = store.booking(1)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert (cancelled.cancelled_by, cancelled.cancel_reason) == ("bob", "patient ill")
    assert ("bob", "booking.cancel", "booking/1") in audit(db)


def test_start_refusals(db: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    assert add(*HEAT) == 0
    assert modctl("book", "start", "1", "--operator", "tom") == 3
    assert "operator 'tom' may not start a treatment: the clinician role is needed" in \
        capsys.readouterr().err
    assert modctl("book", "start", "1") == 3  # 08:00, booked for 09:30
    assert "it can be started from 30 min before its time" in capsys.readouterr().err
    monkeypatch.setattr(clinic_time, "now", lambda: NOW + timedelta(hours=1, minutes=25))
    calibrate(db, "heat-1", passed=False)
    assert modctl("book", "start", "1") == 3
    assert "out of calibration: its last calibration" in capsys.readouterr().err
    assert modctl("book", "start", "9") == 1  # not found
    assert "there is no booking 9" in capsys.readouterr().err
    with RecordStore(db) as store:
        booking = store.booking(1)
        assert booking is not None and booking.status == "booked"
        assert store.list_sessions() == []
    modctl("book", "cancel", "1")
    assert modctl("book", "start", "1") == 3
    assert "booking 1 is cancelled, not booked" in capsys.readouterr().err


def _at_now() -> str:
    return datetime.now().strftime("%Y-%m-%dT%H:%M:%S")


def test_book_start_runs_the_session_on_the_registered_device(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_device: SimFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = clinic(tmp_path, monkeypatch, now=None)
    device = sim_device("hc-200")
    register(db, ("heat-1", "hc-200", device.port))
    assert add(*HEAT, at=_at_now(), duration="1s") == 0
    capsys.readouterr()
    assert modctl("book", "start", "1", "--json") == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["outcome"] == "completed" and report["planned_s"] == 1
    with RecordStore(db) as store:
        booking = store.booking(1)
        assert booking is not None and booking.status == "done"
        assert booking.session_ids == (report["session_id"],)
        session = store.get_session(report["session_id"])
    assert session is not None
    assert (session.patient, session.operator, session.port) == ("P-0042", "alice", device.port)
    # Booking and session both record the profile file they ran on (issue 10 item 2).
    booked = next(iter(booking.profiles.values()))
    assert booked["id"] == "hc-200" and booked["path"].endswith("hc-200.yaml")
    assert len(booked["sha256"]) == 64 and session.profile_sha256 == booked["sha256"]
    actions = [a[1] for a in audit(db) if a[2] == "booking/1"]
    assert actions == ["booking.add", "booking.started", "booking.done"]
    assert modctl("book", "start", "1") == 3
    assert "booking 1 is done, not booked" in capsys.readouterr().err


def test_a_booking_whose_session_never_started_output_can_be_started_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = clinic(tmp_path, monkeypatch, now=None)
    register(db, ("heat-1", "hc-200", str(tmp_path / "unplugged")))
    assert add(*HEAT, at=_at_now(), duration="2s") == 0
    # The session's own status for an unopenable port (refused or link fault): no output.
    assert modctl("book", "start", "1") in (3, 5)
    with RecordStore(db) as store:
        booking = store.booking(1)
    assert booking is not None and booking.status == "booked" and len(booking.session_ids) == 1


PLAN = """\
plan_format: 1
name: short test plan
devices:
  heat: {profile: hc-200}
  tens: {profile: es-4}
steps:
  - {name: heat, device: heat, duration: 1s, set: {temperature_c: 40}}
  - {name: tens, device: tens, duration: 1s, set: {amplitude_ma: 5}}
"""


def test_book_start_of_a_plan_booking_runs_the_plan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_device: SimFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = clinic(tmp_path, monkeypatch, now=None)
    heat, tens = sim_device("hc-200"), sim_device("es-4")
    register(db, ("heat-1", "hc-200", heat.port), ("tens-1", "es-4", tens.port))
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    assert add("--plan", str(plan), "--device", "tens=tens-1", "--device", "heat-1",
               at=_at_now(), duration="") == 0
    capsys.readouterr()
    status = modctl("book", "start", "1", "--json")
    out, err = capsys.readouterr()
    assert out.strip(), err
    report = json.loads(out.splitlines()[-1])
    assert status == 0, report
    assert report["outcome"] == "completed" and len(report["session_ids"]) == 2
    with RecordStore(db) as store:
        booking = store.booking(1)
    assert booking is not None and booking.status == "done"
    assert list(booking.session_ids) == report["session_ids"]
    assert booking.devices == {"heat": "heat-1", "tens": "tens-1"}


def test_session_run_on_a_device_with_overdue_calibration_exits_3(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_device: SimFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = clinic(tmp_path, monkeypatch, now=None)
    device = sim_device("hc-200")
    register(db, ("heat-1", "hc-200", device.port), calibrated=False)
    run = ["session", "run", "hc-200", "--port", device.port, "--duration", "1s", "--set",
           "temperature_c=40", "--operator", "alice", "--json"]
    assert modctl(*run) == 3
    out, err = capsys.readouterr()
    assert "'heat-1' (hc-200) is out of calibration: it has never been calibrated" in err
    assert json.loads(out.splitlines()[-1])["outcome"] == "rejected"
    with RecordStore(db) as store:
        assert store.list_sessions() == []
    assert modctl(*run[:-3], "--operator", "tom") == 3
    assert "the clinician role is needed" in capsys.readouterr().err
    calibrate(db, "heat-1", on=datetime.now(UTC), due=date.today() + timedelta(days=300))
    assert modctl(*run) == 0
