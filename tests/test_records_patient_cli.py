"""`modctl records patient | report` and the per-patient `records export`."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import pytest

from controller.cli import main as cli_main
from controller.cli import records_cmd
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


def test_patient_table(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("patient", "P-1", "--db", str(db)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("patient P-1: 3 sessions, ")
    assert lines[2].split()[:3] == ["STARTED", "(UTC)", "SESSION"]
    sessions = lines[3:6]
    assert [line.split()[2] for line in sessions] == ids(db, "P-1")
    assert "thermal" in sessions[0] and "CEM43 2 min" in sessions[0]
    assert "energy 2250 J, treatment 300 s" in sessions[1] and "300.0s" in sessions[1]
    assert lines[7] == "totals"
    totals = {line.split()[0]: line for line in lines[9:]}
    assert list(totals) == ["thermal", "ultrasound"]
    assert totals["thermal"].split()[1:3] == ["2", "1260.0s"]
    assert "CEM43 3.25 min" in totals["thermal"]


def test_patient_json_and_csv(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("patient", "P-1", "--json", "--db", str(db)) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["session_id"] for s in data["sessions"]] == ids(db, "P-1")
    assert data["totals"]["thermal"]["dose"]["cem43_min"] == pytest.approx(3.25)
    assert run("patient", "P-1", "--csv", "--db", str(db)) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["row"] for r in rows] == ["session"] * 3 + ["total"] * 2
    assert rows[-1]["modality"] == "ultrasound" and rows[-1]["energy_j"] == "2250.0"


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
    assert str(out) in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and sid in text
    assert 'data-samples="5"' in text and "<svg" in text


def test_report_default_name_and_stdout(db: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    sid = ids(db, "P-1")[1]
    monkeypatch.chdir(tmp_path)
    assert run("report", sid, "--db", str(db)) == 0
    assert (tmp_path / f"session-{sid}.html").is_file()
    capsys.readouterr()
    assert run("report", sid, "--out", "-", "--db", str(db)) == 0
    out = capsys.readouterr().out
    assert out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")
    assert "No telemetry was recorded" in out


def test_report_errors_in_one_line(db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run("report", "ZZZZZZZZ", "--db", str(db)) == 1
    assert "no session ZZZZZZZZ" in capsys.readouterr().err
    sid = ids(db, "P-1")[0]
    assert run("report", sid, "--out", str(tmp_path / "missing" / "r.html"),
               "--db", str(db)) == 1
    assert "cannot write" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "r.html"
    assert run("report", sid, "--out", str(out), "--db", str(db)) == 1
    err = capsys.readouterr().err
    assert "install modctl[report]" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_through_the_modctl_entry_point(db: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", (records_cmd,))
    assert cli_main.main(["records", "patient", "P-2", "--db", str(db)]) == 0
    assert "tens" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli_main.main(["records", "report", "--db", str(db)])
    assert info.value.code == 2
