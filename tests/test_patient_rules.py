"""One patient rule set for every route to an output (issue 10, item 7).

- A pseudonymous patient id: `session run`, `plan run` and `book add` refuse a name the same
  way (exit 2, usage error), before any record or port is opened.
- The clinic's minimum interval between two treatments of one modality for one patient: the
  function bookings use (`patient_rules.interval_conflict`) is applied by `session run` and
  `plan run` too, against the patient's recorded sessions from any route. The clock is injected
  (`clinic_time.now`, or the `start` argument), so nothing sleeps for hours.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.clinic import clock as clinic_time
from controller.clinic import roles
from controller.clinic.patients import PatientIdError, check_patient_id, interval_conflict
from controller.device.link import DeviceLink
from controller.records.store import RecordStore
from tests.conftest import SimFactory
from tests.session_helpers import history
from tests.test_devices_cli import ROLES, clinic, modctl

HOUR = 3600.0
INTERVAL_S = 4 * HOUR   # roles.DEFAULT_MIN_INTERVAL_H, the interval when no roles file sets one
HEAT_RUN = ["session", "run", "hc-200", "--duration", "1s", "--set", "temperature_c=40",
            "--operator", "alice"]


@pytest.fixture
def no_port(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails the test if anything opens a device port; the ports that were asked for."""
    asked: list[str] = []

    def refuse(profile: Any, port: str, *a: Any, **kw: Any) -> DeviceLink:
        asked.append(port)
        raise AssertionError(f"a port was opened: {port}")
    monkeypatch.setattr(DeviceLink, "open", refuse)
    return asked


# -- the id rule, everywhere an id is typed ----------------------------------------------------
@pytest.mark.parametrize("text", ["John Smith", "Anna-Berg", "P 0042", "P-٤٢", "Ｐ-００４２",
                                  "P-0042;DROP", "=1+1", "P1", "P-" + "1" * 40])
def test_the_rule_refuses_names_and_anything_not_a_pseudonymous_ascii_id(text: str) -> None:
    with pytest.raises(PatientIdError, match="not a pseudonymous patient id"):
        check_patient_id(text)


@pytest.mark.parametrize("text", ["P-0042", "2026-117", "KX7Q", " P-0042 "])
def test_the_rule_accepts_pseudonymous_ids(text: str) -> None:
    assert check_patient_id(text) == text.strip()


@pytest.mark.parametrize("route", [
    [*HEAT_RUN, "--port", "/dev/pts/91"],
    ["plan", "run", "low-back-pain", "--yes", "--device", "heat=/dev/pts/91", "--device",
     "ultrasound=/dev/pts/92", "--device", "tens=/dev/pts/93", "--operator", "alice"],
    ["book", "add", "--device", "heat-1", "--profile", "hc-200", "--set", "temperature_c=40",
     "--duration", "15m", "--at", "2030-03-04T09:30", "--operator", "alice"],
])
def test_every_route_refuses_a_name_as_a_usage_error_before_anything_is_opened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        no_port: list[str], route: list[str]) -> None:
    db = clinic(tmp_path, monkeypatch)
    assert modctl(*route, "--patient", "John Smith") == 2
    out, err = capsys.readouterr()
    assert "--patient 'John Smith' is not a pseudonymous patient id" in err
    assert "never a patient's name" in err and "Traceback" not in err
    assert out == ""
    assert no_port == []
    assert not db.exists()  # not even the records were opened


def test_session_run_json_refusal_of_a_name_is_a_usage_error_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        no_port: list[str]) -> None:
    clinic(tmp_path, monkeypatch)
    assert modctl(*HEAT_RUN, "--port", "/dev/pts/91", "--json", "--patient", "Anna Berg 1") == 2
    assert "not a pseudonymous patient id" in capsys.readouterr().err


def test_looking_records_up_stays_lenient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Sessions recorded before the rule may hold any text; they must still be found.
    db = clinic(tmp_path, monkeypatch)
    with RecordStore(db) as store:
        sid = store.open_session(profile="hc-200", port="/dev/pts/91", identity={},
                                 operator="alice", patient="John Smith", prescription={},
                                 planned_s=60)
        store.close_session(sid, "completed", "done", "controller", 60, {})
    assert modctl("records", "patient", "John Smith") == 0
    assert sid in capsys.readouterr().out
    assert modctl("book", "list", "--all", "--patient", "John Smith") == 0


# -- the minimum interval: one function, injected clock ----------------------------------------
def recorded(store: RecordStore, patient: str = "P-0042", profile: str = "hc-200",
             outcome: str = "completed", delivered_s: float = 900.0,
             modality: str | None = None) -> str:
    rx = {"modality": modality} if modality else {}
    sid = store.open_session(profile=profile, port="/dev/pts/91", identity={},
                             operator="alice", patient=patient, prescription=rx,
                             planned_s=900)
    store.close_session(sid, outcome, "done", "controller", delivered_s, {})
    return sid


def test_interval_conflict_names_the_session_and_when_the_next_may_start(
        tmp_path: Path) -> None:
    with RecordStore(tmp_path / "r.sqlite3") as store:
        sid = recorded(store)
        row = store.get_session(sid)
        assert row is not None and row.ended_at is not None
        ended = datetime.fromisoformat(row.ended_at)

        def at(after_end: timedelta, modality: str = "thermal") -> str | None:
            start = ended + after_end
            return interval_conflict(store, "P-0042", modality, start,
                                     start + timedelta(minutes=15), INTERVAL_S)

        reason = at(timedelta(hours=1))
        assert reason is not None
        assert f"(session {sid}, ended {clinic_time.show(ended)})" in reason
        assert "minimum interval between two thermal treatments is 4 h" in reason
        assert f"the next may start from {clinic_time.show(ended + timedelta(hours=4))}" \
            in reason
        assert at(timedelta(hours=3, minutes=59)) is not None
        assert at(timedelta(hours=4, seconds=1)) is None
        assert at(timedelta(hours=1), modality="ultrasound") is None  # another modality
        assert interval_conflict(store, "P-0043", "thermal", ended, ended, INTERVAL_S) is None


def test_sessions_that_never_delivered_do_not_count(tmp_path: Path) -> None:
    with RecordStore(tmp_path / "r.sqlite3") as store:
        recorded(store, outcome="rejected", delivered_s=0.0)
        recorded(store, outcome="fault", delivered_s=0.0)
        now = datetime.now(UTC)
        assert interval_conflict(store, "P-0042", "thermal", now, now, INTERVAL_S) is None
        sid = recorded(store, outcome="fault", delivered_s=3.0)   # the output was on
        reason = interval_conflict(store, "P-0042", "thermal", now, now, INTERVAL_S)
        assert reason is not None and sid in reason


def test_the_modality_comes_from_the_record_or_else_the_profile(tmp_path: Path) -> None:
    with RecordStore(tmp_path / "r.sqlite3") as store:
        recorded(store, profile="a-profile-long-gone", modality="ultrasound")
        now = datetime.now(UTC)
        assert interval_conflict(store, "P-0042", "ultrasound", now, now, INTERVAL_S)
        assert interval_conflict(store, "P-0042", "thermal", now, now, INTERVAL_S) is None


# -- session run and plan run apply it ---------------------------------------------------------
@pytest.fixture
def no_roles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No roles file (the default 4 h interval), a records database, the real clock."""
    return clinic(tmp_path, monkeypatch, roles_text=None, now=None)


def test_back_to_back_session_runs_for_one_patient_are_refused_until_the_interval(
        no_roles: Path, monkeypatch: pytest.MonkeyPatch, sim_device: SimFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    device = sim_device("hc-200")
    run = [*HEAT_RUN, "--port", device.port, "--patient", "P-0042"]
    assert modctl(*run) == 0
    with RecordStore(no_roles) as store:
        [first] = store.list_sessions()
    assert first.patient == "P-0042"
    capsys.readouterr()
    assert [c.on for c in history(device)] == [True, False]

    assert modctl(*run, "--json") == 3
    out, err = capsys.readouterr()
    assert "rejected: patient P-0042 had a thermal session at" in err
    assert f"(session {first.id}, ended" in err and "the next may start from" in err
    assert json.loads(out.splitlines()[-1])["outcome"] == "rejected"
    assert [c.on for c in history(device)] == [True, False]  # never switched on again
    with RecordStore(no_roles) as store:
        assert [s.id for s in store.list_sessions()] == [first.id]

    # Another patient is not concerned; without --patient there is nobody to check.
    assert modctl(*HEAT_RUN, "--port", device.port, "--patient", "P-0043") == 0
    assert modctl(*HEAT_RUN, "--port", device.port) == 0  # no patient: nothing to check
    # The clock is injected: five hours later the same patient may be treated again.
    later = datetime.now(UTC) + timedelta(hours=5)
    monkeypatch.setattr(clinic_time, "now", lambda: later)
    assert modctl(*run) == 0


def test_the_roles_file_sets_the_interval_for_session_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_device: SimFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    clinic(tmp_path, monkeypatch, roles_text=ROLES + "clinic:\n  min_interval_hours: 0\n",
           now=None)
    device = sim_device("hc-200")
    run = [*HEAT_RUN, "--port", device.port, "--patient", "P-0042"]
    assert modctl(*run) == 0
    assert modctl(*run) == 0, capsys.readouterr().err


def test_plan_run_is_refused_after_a_session_of_one_of_its_modalities(
        no_roles: Path, tmp_path: Path, sim_device: SimFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    heat = sim_device("hc-200")
    assert modctl(*HEAT_RUN, "--port", heat.port, "--patient", "P-0042") == 0
    plan = tmp_path / "heat-twice.yaml"
    plan.write_text("plan_format: 1\nname: heat twice\ndevices:\n  heat: {profile: hc-200}\n"
                    "steps:\n"
                    "  - {name: a, device: heat, duration: 1s, set: {temperature_c: 40}}\n"
                    "  - {name: b, device: heat, duration: 1s, set: {temperature_c: 40}}\n")
    capsys.readouterr()
    argv = ["plan", "run", str(plan), "--yes", "--device", f"heat={heat.port}",
            "--operator", "alice"]
    assert modctl(*argv, "--patient", "P-0042") == 3
    assert "patient P-0042 had a thermal session at" in capsys.readouterr().out
    assert [c.on for c in history(heat)] == [True, False]  # the plan switched nothing on
    # The plan's own two heat steps are one treatment: they never block each other.
    assert modctl(*argv, "--patient", "P-0044") == 0
    assert [c.on for c in history(heat)] == [True, False] * 3
    # ... but the plan, once run, counts for the next session of that patient.
    capsys.readouterr()
    assert modctl(*HEAT_RUN, "--port", heat.port, "--patient", "P-0044") == 3
    assert "patient P-0044 had a thermal session at" in capsys.readouterr().err


def test_default_interval_is_the_one_the_tests_assume() -> None:
    assert roles.DEFAULT_MIN_INTERVAL_H * HOUR == INTERVAL_S
