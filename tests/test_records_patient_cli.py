"""`modctl records patient | report` (HTML, PDF) and the per-patient `records export`."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import pytest

from controller.cli import main as cli_main
from controller.cli import records_cmd
from controller.records import report_pdf
from controller.records.clinical import local_zone
from controller.records.report_pdf import find_converter, pdf_page_count
from controller.records.store import RecordStore
from tests.test_history import HEAT_41, HEAT_44, TENS_25, US_CONT, record_session


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
        record_session(store, "P-1", "thermal", HEAT_44,
                       samples=[(0.2 * i, {"temperature_c": 40.0 + i}) for i in range(5)])
        record_session(store, "P-1", "ultrasound", US_CONT, delivered_s=300.0)
        record_session(store, "P-2", "tens", TENS_25, delivered_s=1200.0)
        record_session(store, "P-1", "thermal", HEAT_41, delivered_s=1200.0)
    return path


def ids(db: Path, patient: str) -> list[str]:
    with RecordStore(db) as store:
        return [s.id for s in reversed(store.list_sessions(patient=patient))]


def test_patient_table_speaks_clinical_language(db: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert run("patient", "P-1", "--db", str(db)) == 0
    lines = capsys.readouterr().out.splitlines()
    zone = local_zone()
    assert lines[0].startswith("patient P-1: 3 sessions, ") and lines[0].endswith(f"({zone})")
    assert lines[2].split()[:3] == ["STARTED", f"({zone})", "SESSION"]
    sessions = lines[3:6]
    assert [line.split()[2] for line in sessions] == ids(db, "P-1")
    assert "Heat therapy" in sessions[0] and "Thermal dose (CEM43) 2 min" in sessions[0]
    assert "Completed as planned" in sessions[0] and "hc-200 #" in sessions[0]
    assert "Therapeutic ultrasound" in sessions[1]
    assert "Acoustic energy 2250 J, Treatment time (coupled) 5 min" in sessions[1]
    assert "  5 min  " in sessions[1]   # delivered
    assert lines[7] == "totals"
    totals = {line.split("  ")[0]: line for line in lines[9:]}
    assert list(totals) == ["Heat and cold therapy", "Therapeutic ultrasound"]
    assert totals["Heat and cold therapy"].split()[4:7] == ["2", "21", "min"]
    # CEM43 to 2 significant figures, rounded half up, as a clinician reads it: 3.25 -> 3.3.
    assert "Thermal dose (CEM43) 3.3 min" in totals["Heat and cold therapy"]


def test_patient_json_and_csv(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("patient", "P-1", "--json", "--db", str(db)) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["session_id"] for s in data["sessions"]] == ids(db, "P-1")
    assert data["totals"]["thermal"]["dose"]["cem43_min"] == pytest.approx(3.25)
    assert run("patient", "P-1", "--csv", "--db", str(db)) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["row"] for r in rows] == ["session"] * 3 + ["total"] * 2
    assert rows[-1]["modality"] == "ultrasound" and rows[-1]["energy_j"] == "2250.0"
    assert rows[0]["device_serial"] == "" and "device_serial" in rows[0]


def test_patient_json_carries_patient_operator_times_and_device(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "records.sqlite3"
    with RecordStore(path) as store:
        sid = record_session(store, "P-9", "tens", TENS_25, close=False)
        store.set_session_identity(sid, {"model": "ES-4", "serial": "SN-4711", "firmware": "1.2"})
        store.close_session(sid, "completed", "planned duration delivered", "controller",
                            60.0, TENS_25)
    assert run("patient", "P-9", "--json", "--db", str(path)) == 0
    entry = json.loads(capsys.readouterr().out)["sessions"][0]
    assert entry["patient"] == "P-9" and entry["operator"] == "carol"
    assert entry["started_at"] and entry["ended_at"] >= entry["started_at"]
    assert entry["device_serial"] == "SN-4711"
    assert entry["device"] == {"model": "ES-4", "serial": "SN-4711", "firmware": "1.2"}


def test_patient_json_and_csv_are_exclusive(db: Path) -> None:
    with pytest.raises(SystemExit) as info:
        run("patient", "P-1", "--json", "--csv", "--db", str(db))
    assert info.value.code == 2


def test_patient_without_sessions(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("patient", "nobody", "--db", str(db)) == 0
    assert capsys.readouterr().out.strip() == "no sessions for patient nobody"
    assert run("patient", "nobody", "--json", "--db", str(db)) == 0
    assert json.loads(capsys.readouterr().out)["sessions"] == []


def test_patient_with_a_missing_database(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "typo.sqlite3"
    assert run("patient", "P-1", "--db", str(path)) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err
    assert not path.exists()


def test_export_per_patient_adds_the_history(db: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert run("export", "--patient", "P-1", "--db", str(db)) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["patient"] for s in data["sessions"]] == ["P-1"] * 3
    assert data["patient"] == "P-1"
    assert data["history"]["totals"]["ultrasound"]["dose"]["energy_j"] == 2250.0
    # Without --patient, and as CSV, the export is as before.
    assert run("export", "--db", str(db)) == 0
    assert "history" not in json.loads(capsys.readouterr().out)
    assert run("export", "--patient", "P-1", "--format", "csv", "--db", str(db)) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 3 and "row" not in rows[0]


def test_report_to_a_file(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sid = ids(db, "P-1")[0]
    out = tmp_path / "report.html"
    assert run("report", sid[:20], "--out", str(out), "--db", str(db)) == 0
    assert capsys.readouterr().out.strip() == f"report of session {sid} written to {out}"
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and sid in text
    assert 'data-samples="5"' in text and "<svg" in text


def test_report_goes_to_stdout_without_out(db: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    sid = ids(db, "P-1")[1]
    monkeypatch.chdir(tmp_path)
    for extra in ((), ("--out", "-")):
        assert run("report", sid, *extra, "--db", str(db)) == 0
        out = capsys.readouterr().out
        assert out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")
        assert "No telemetry was recorded" in out and "Events (" not in out
    assert not list(tmp_path.glob("*.html"))  # nothing written beside the database
    assert run("report", sid, "--detail", "--db", str(db)) == 0
    assert "Events (" in capsys.readouterr().out


def test_report_prints_the_clinic_from_the_roles_file(db: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    roles = tmp_path / "roles.yaml"
    roles.write_text("clinic:\n  name: Riverside Physiotherapy\n"
                     "  address: \"12 Quay Street\\nRiverside\"\n", encoding="utf-8")
    roles.chmod(0o644)
    monkeypatch.setenv("MODCTL_ROLES", str(roles))
    sid = ids(db, "P-1")[0]
    assert run("report", sid, "--db", str(db)) == 0
    out = capsys.readouterr().out
    assert '<div class="clinic-name">Riverside Physiotherapy</div>' in out
    assert "12 Quay Street\nRiverside" in out
    roles.write_text("clinic:\n  name: [not, text]\n", encoding="utf-8")
    assert run("report", sid, "--db", str(db)) == 1
    err = capsys.readouterr().err
    assert "roles.yaml:2: clinic.name" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(find_converter() is None, reason="needs chromium (.ci/run installs it)")
def test_report_as_pdf(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "visit.pdf"
    assert run("report", ids(db, "P-1")[0], "--out", str(out), "--db", str(db)) == 0
    assert out.read_bytes().startswith(b"%PDF") and pdf_page_count(out.read_bytes()) == 1


def test_report_as_pdf_without_a_converter(db: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(report_pdf, "find_converter", lambda: None)
    out = tmp_path / "visit.pdf"
    assert run("report", ids(db, "P-1")[0], "--out", str(out), "--db", str(db)) == 1
    err = capsys.readouterr().err
    assert "no PDF converter found" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_report_errors_in_one_line(db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run("report", "ZZZZZZZZ", "--db", str(db)) == 1
    assert "no session ZZZZZZZZ" in capsys.readouterr().err
    sid = ids(db, "P-1")[0]
    assert run("report", sid, "--out", str(tmp_path / "missing" / "r.html"),
               "--db", str(db)) == 1
    assert "cannot write" in capsys.readouterr().err


def test_through_the_modctl_entry_point(db: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", (records_cmd,))
    assert cli_main.main(["records", "patient", "P-2", "--db", str(db)]) == 0
    assert "TENS" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli_main.main(["records", "report", "--db", str(db)])
    assert info.value.code == 2
