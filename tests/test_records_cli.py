"""`modctl records list | show | export | verify` (notes: test_notes; FHIR: test_fhir)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from controller.cli import main as cli_main
from controller.cli import records_cmd
from controller.records.store import RecordStore


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="modctl")
    records_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["records", *argv])
    status: int = args.run(args)
    return status


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "records.sqlite3"
    with RecordStore(path) as store:
        for patient, outcome in (("P-1", "completed"), ("P-2", "fault")):
            sid = store.open_session(
                profile="us-300", port="/dev/pts/4", identity={"model": "US-300"},
                operator="carol", patient=patient, planned_s=300.0,
                prescription={"intensity_w_cm2": 1.5, "duty_pct": 20})
            store.add_event(sid, "command", {"op": "start"}, t_s=0.25)
            store.add_event(sid, "fault", {"what": "applicator hot"}, t_s=61.5)
            store.close_session(sid, outcome, "done", "timer", 61.5, {"energy_j": 450.0})
    return path


def session_ids(db: Path) -> list[str]:
    with RecordStore(db) as store:
        return [s.id for s in store.list_sessions()]


def test_list(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("list", "--db", str(db)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["ID", "STARTED", "PROFILE"]
    assert len(out) == 3 and "P-2" in out[1] and "fault" in out[1]
    assert run("list", "--db", str(db), "--patient", "P-1", "--limit", "5") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "P-1" in out[1]
    assert run("list", "--db", str(db), "--patient", "nobody") == 0
    assert capsys.readouterr().out.strip() == "no sessions"


def test_list_refuses_a_bad_limit(db: Path) -> None:
    with pytest.raises(SystemExit) as info:
        run("list", "--db", str(db), "--limit", "0")
    assert info.value.code == 2


def test_show_prints_the_events_timeline(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sid = session_ids(db)[0]
    assert run("show", sid[:20], "--db", str(db)) == 0
    out = capsys.readouterr().out
    assert sid in out and "energy_j" in out and "events (2)" in out
    lines = out.splitlines()
    assert "+   61.500s" in lines[-1] and "fault" in lines[-1] and "applicator hot" in lines[-1]


def test_show_speaks_clinical_language_first(db: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    sid = session_ids(db)[0]  # P-2: a fault
    assert run("show", sid, "--db", str(db)) == 0
    lines = {line.split("  ")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "Therapeutic ultrasound" in lines["therapy"]
    assert "Duty cycle 20 % (pulsed), intensity 1.5 W/cm², treatment time 5 min" in \
        lines["prescription"]
    assert "Generic Therapy Devices US-300, serial not reported (port /dev/pts/4)" in \
        lines["device"]
    assert "Stopped by a fault: done. The output was ended by the timer." in lines["outcome"]
    assert "61.5 s of 5 min planned" in lines["delivered"]
    assert "Acoustic energy 450 J" in lines["dose"]
    assert "notes (0)" in lines


def test_show_json_carries_the_record_and_its_clinical_summary(
        db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sid = session_ids(db)[1]
    with RecordStore(db) as store:
        store.add_note(sid, actor="carol", pain_before=4)
    assert run("show", sid, "--json", "--db", str(db)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["session"]["id"] == sid and len(data["session"]["events"]) == 2
    clinical = data["clinical"]
    assert clinical["patient"] == "P-1" and clinical["operator"] == "carol"
    assert clinical["started_at"] == data["session"]["started_at"] and clinical["ended_at"]
    assert clinical["device"]["model"] == "US-300" and clinical["device_serial"] == ""
    assert clinical["outcome"].startswith("Completed as planned")
    assert clinical["dose"]["energy_j"] == {"label": "Acoustic energy", "value": 450.0,
                                            "unit": "J"}
    assert [n["pain_before"] for n in data["notes"]] == [4]


def test_export_since_a_day(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    today = datetime.now().astimezone().date()
    assert run("export", "--since", today.isoformat(), "--db", str(db)) == 0
    assert len(json.loads(capsys.readouterr().out)["sessions"]) == 2
    tomorrow = today + timedelta(days=1)
    assert run("export", "--format", "csv", "--since", tomorrow.isoformat(),
               "--db", str(db)) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1  # the header only


def test_show_unknown_session(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("show", "ZZZZZZZZ", "--db", str(db)) == 1
    assert "no session ZZZZZZZZ" in capsys.readouterr().err


def test_export_json_to_stdout(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("export", "--format", "json", "--patient", "P-2", "--db", str(db)) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["patient"] for s in data["sessions"]] == ["P-2"]
    assert len(data["sessions"][0]["events"]) == 2


def test_export_csv_to_a_file(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export.csv"
    assert run("export", "--format", "csv", "--out", str(out), "--db", str(db)) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [r["patient"] for r in rows] == ["P-1", "P-2"]
    assert rows[0]["dose.energy_j"] == "450.0"


def test_export_to_an_unwritable_place(db: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert run("export", "--out", str(tmp_path / "missing" / "x.json"), "--db", str(db)) == 1
    assert "cannot write" in capsys.readouterr().err


def test_verify_intact_then_broken(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("verify", "--db", str(db)) == 0
    # Two sessions: open, two events and close each.
    out = capsys.readouterr().out
    assert "intact: 8 entries" in out and "chain head: 8 entries, sha256 " in out
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET actor = 'mallory' WHERE id = 2")
    conn.close()
    assert run("verify", "--db", str(db)) == 1
    assert "broken at entry 2" in capsys.readouterr().err


def test_environment_variable_and_db_option(db: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MODCTL_DB", str(db))
    assert run("list") == 0
    assert "P-1" in capsys.readouterr().out
    other = tmp_path / "other.sqlite3"
    RecordStore(other).close()
    assert run("list", "--db", str(other)) == 0  # --db beats MODCTL_DB
    assert capsys.readouterr().out.strip() == "no sessions"


def test_missing_database_is_reported_not_created(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "typo.sqlite3"
    assert run("list", "--db", str(path)) == 1
    assert str(path) in capsys.readouterr().err
    assert not path.exists()


def test_corrupt_database_gives_one_plain_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.sqlite3"
    path.write_bytes(b"garbage " * 512)
    assert run("verify", "--db", str(path)) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_through_the_modctl_entry_point(db: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", (records_cmd,))
    assert cli_main.main(["records", "verify", "--db", str(db)]) == 0
    assert "intact" in capsys.readouterr().out
