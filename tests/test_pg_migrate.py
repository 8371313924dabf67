"""`records migrate` (issue 14 §3): a clinic's SQLite records moved to PostgreSQL with the audit
chain intact, against the real server; and what it refuses. `pg_url` (conftest) is a fresh
schema per test."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from controller.records.migrate import MigrationError, location, migrate
from controller.records.store import RecordsError, RecordStore
from controller.records.target import PgUrl
from tests.test_records_integrity import raw, schema_2_database

AT = datetime(2031, 5, 6, 9, 0, tzinfo=UTC)
PROFILE = {"id": "hc-200", "path": "/etc/modctl/hc-200.yaml", "sha256": "ab" * 32}


def open_one(store: RecordStore, patient: str) -> str:
    return store.open_session(profile="hc-200", port="/dev/pts/9", identity={},
                              operator="alice", patient=patient, planned_s=600.0,
                              prescription={"temperature_c": 40.0},
                              profile_path=PROFILE["path"], profile_sha256=PROFILE["sha256"])


def book(store: RecordStore, device: str, patient: str, starts_at: datetime) -> int:
    return store.add_booking(devices={"device": device}, profile="hc-200", plan=None,
                             settings={"temperature_c": "40"}, modalities=["thermal"],
                             patient=patient, starts_at=starts_at, duration_s=600.0,
                             actor="bob", min_interval_s=0.0,
                             profiles={"session": PROFILE}).id


def clinic(path: Path) -> dict[str, Any]:
    """A used clinic database: accounts, devices (one removed), calibrations, bookings
    (booked, cancelled, done), closed sessions with events, telemetry and notes, one session
    marked interrupted and one left open by a controller that stopped."""
    with RecordStore(path) as s:
        s.add_user("alice", "clinician", "scrypt$alice", "admin")
        s.add_user("Tom", "technician", "scrypt$tom", "admin")
        s.set_user_password("Tom", "scrypt$tom2", "Tom")
        s.add_user("eve", "clinician", "scrypt$eve", "admin")
        s.disable_user("eve", "admin")
        s.add_device("heat-1", "hc-200", "/dev/pts/9", "Tom", serial="A1", model="HC-200",
                     profile_path=PROFILE["path"], profile_sha256=PROFILE["sha256"],
                     port_real="/dev/pts/9")
        s.add_device("heat-2", "hc-200", "/dev/pts/8", "Tom")
        s.remove_device("heat-2", "Tom", "broken")
        s.add_device("heat-3", "hc-200", "/dev/pts/8", "Tom", serial="B7", model="HC-200")
        for device, passed in (("heat-1", True), ("heat-3", False)):
            s.add_calibration(device=device, profile="hc-200", technician="Tom",
                              instrument="probe", instrument_id="T-1", before={"c": 40.2},
                              after={"c": 40.0}, passed=passed, performed_at=AT,
                              next_due=date(2031, 6, 6))
        cancelled = book(s, "heat-1", "P-001", AT + timedelta(days=1))
        s.cancel_booking(cancelled, "bob", "patient ill")
        book(s, "heat-1", "P-001", AT + timedelta(days=1))
        done = book(s, "heat-3", "P-002", AT)
        sessions = []
        for patient, outcome in (("P-001", "completed"), ("P-002", "fault")):
            sid = open_one(s, patient)
            sessions.append(sid)
            s.set_session_identity(sid, {"model": "HC-200", "serial": "A1"})
            for n in range(3):
                # floats with no short decimal form: copied bit for bit, or the hashes differ
                s.add_sample(sid, {"pad_c": 39.0 + n / 3, "elapsed_s": float(n)}, t_s=n / 3,
                             delivered_s=n / 7)
                s.add_event(sid, "reply", {"n": n, "text": "50% ✓ 'q'"}, t_s=n + 1 / 3,
                            delivered_s=n / 3, dose={"cem43": n / 7})
            s.close_session(sid, outcome, "done", "timer", 3.0, {"cem43": 0.1},
                            device_elapsed_s=2.9)
            s.add_note(sid, actor="alice", body_site="lower back", skin_before="normal",
                       skin_after="slight redness", pain_before=6, pain_after=3,
                       text="tolerated well")
        s.mark_booking(done, "started", "alice")
        s.mark_booking(done, "done", "alice", session_ids=sessions[1:])
        for _ in range(2):  # one crashed controller's session, found later; one not yet
            sid = open_one(s, "P-003")
            s.add_sample(sid, {"pad_c": 38.5, "elapsed_s": 1.0}, t_s=1.0)
            s.add_event(sid, "state", {"state": "running"}, t_s=0.2, delivered_s=0.0)
            sessions.append(sid)
            s.close()  # the session stays open, its owner lock is gone
            s = RecordStore(path)
            if len(sessions) == 3:
                assert [r.id for r in s.mark_interrupted_sessions()] == [sid]
        s.close()
    return {"sessions": sessions}


def contents(store: RecordStore) -> dict[str, Any]:
    """Everything a clinic reads back through the store's API."""
    sessions = store.list_sessions(limit=None)
    return {
        "sessions": [store.get_session(r.id) for r in sessions],
        "samples": {r.id: store.get_samples(r.id) for r in sessions},
        "notes": {r.id: store.notes(r.id) for r in sessions},
        "devices": store.devices(include_removed=True),
        "bookings": store.bookings(),
        "calibrations": {d.name: store.calibrations(d.name)
                         for d in store.devices(include_removed=True)},
        # by name without case: SQLite's NOCASE order; PostgreSQL's users() sorts with case
        "users": sorted(store.users(), key=lambda u: u.name.lower()),
    }


def empty_schema(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regclass('audit')").fetchone() == (None,)


def test_a_clinic_moves_to_postgresql_with_the_chain_intact(tmp_path: Path, pg_url: str) -> None:
    src = tmp_path / "records.sqlite3"
    made = clinic(src)
    with RecordStore(src) as s:
        before, source_check = contents(s), s.verify_audit()
    said: list[str] = []
    report = migrate(src, PgUrl(pg_url), progress=said.append)
    assert (report.head_hash, report.entries) == (source_check.head_hash,
                                                  source_check.entries)
    assert report.counts["sessions"] == 4 and report.counts["bookings"] == 3
    assert report.counts["samples"] == 8 and report.counts["session_notes"] == 2
    assert report.open_sessions == 1 and report.seconds > 0
    assert any("verifying the copy" in line for line in said)
    assert source_check.head_hash in "\n".join(report.lines())
    with RecordStore(pg_url) as t:
        check = t.verify_audit(expect_head=source_check.head_hash)
        assert check.ok and check.head_hash == source_check.head_hash, check.reason
        assert contents(t) == before
        assert {r.status for r in before["sessions"]} == {"closed", "interrupted", "open"}
        # the chain goes on: new rows get ids after the copied ones and are sealed as usual
        assert book(t, "heat-1", "P-009", AT + timedelta(days=3)) == 4
        assert t.add_calibration(device="heat-1", profile="hc-200", technician="Tom",
                                 instrument="probe", instrument_id="T-1", before={}, after={},
                                 passed=True, performed_at=AT, next_due=date(2031, 7, 1)) == 3
        assert t.add_note(made["sessions"][0], actor="alice", text="follow-up").id == 3
        left_open = made["sessions"][3]
        assert [r.id for r in t.mark_interrupted_sessions()] == [left_open]
        sid = open_one(t, "P-010")
        t.add_sample(sid, {"pad_c": 40.0}, t_s=1.0)
        t.add_event(sid, "note", t_s=1.0)
        t.close_session(sid, "completed", "end", "timer", 1.0, None)
        after = t.verify_audit(expect_head=source_check.head_hash)
        assert after.ok and after.entries > source_check.entries, after.reason
    # ... and back again: the PostgreSQL copy moves to a new SQLite file the same way
    back = migrate(pg_url, f"sqlite://{tmp_path / 'back.sqlite3'}")
    assert back.head_hash == after.head_hash
    with RecordStore(tmp_path / "back.sqlite3") as b:
        assert b.verify_audit().ok and b.get_session(sid) is not None
        assert book(b, "heat-1", "P-011", AT + timedelta(days=4)) == 5


def test_an_older_database_is_upgraded_sealed_and_moved(tmp_path: Path, pg_url: str) -> None:
    src = tmp_path / "old.sqlite3"
    sid = schema_2_database(src)
    report = migrate(src, pg_url)
    assert report.entries == 2  # the old entry and the upgrade's baseline
    with RecordStore(src) as s, RecordStore(pg_url) as t:
        assert t.verify_audit(expect_head=report.head_hash).ok
        assert t.get_session(sid) == s.get_session(sid)
        assert t.get_samples(sid) == s.get_samples(sid)
        assert t.calibrations("heat-1") == s.calibrations("heat-1")
        assert t.add_calibration(device="heat-1", profile="hc-200", technician="tom",
                                 instrument="probe", instrument_id="T-1", before={}, after={},
                                 passed=True, performed_at=AT, next_due=date(2031, 7, 1)) == 2
        assert t.verify_audit().ok


def test_a_used_target_is_never_merged_into(tmp_path: Path, pg_url: str) -> None:
    src = tmp_path / "records.sqlite3"
    with RecordStore(src) as s:
        s.add_user("alice", "clinician", "h", "admin")
    with RecordStore(pg_url) as t:
        t.add_user("bob", "admin", "h", "admin")
    with pytest.raises(MigrationError, match=r"already holds records \(1 users, 1 audit\)"
                                             ".*never merges"):
        migrate(src, pg_url)
    with RecordStore(pg_url) as t:
        assert [u.name for u in t.users()] == ["bob"] and t.verify_audit().entries == 1
    with pytest.raises(MigrationError, match="the source itself"):
        migrate(src, f"sqlite://{src}")


def test_a_tampered_or_missing_source_is_refused_before_anything_is_written(
        tmp_path: Path, pg_url: str) -> None:
    src = tmp_path / "records.sqlite3"
    with RecordStore(src) as s:
        sid = open_one(s, "P-001")
        s.add_event(sid, "reply", {"n": 1}, t_s=0.5)
        s.close_session(sid, "fault", "pad hot", "device", 1.0, None)
    raw(src).execute("UPDATE sessions SET outcome = 'completed'")
    with pytest.raises(MigrationError, match=f"does not verify \\(sessions row {sid}.*changed"):
        migrate(src, pg_url)
    missing = tmp_path / "nowhere.sqlite3"
    with pytest.raises(RecordsError, match=f"{missing}: no such file"):
        migrate(missing, pg_url)
    assert empty_schema(pg_url) and not missing.exists()


def test_a_session_being_recorded_on_the_source_is_refused(tmp_path: Path, pg_url: str) -> None:
    src = tmp_path / "records.sqlite3"
    with RecordStore(src) as s:
        sid = open_one(s, "P-001")
        with pytest.raises(MigrationError, match=f"session {sid} is being recorded"):
            migrate(src, pg_url)
    assert empty_schema(pg_url)


def older_with(path: Path, *sql: str) -> None:
    """A schema-2 file with rows written straight into it (as a modctl of then allowed):
    the upgrade seals them in its baseline, so they verify."""
    schema_2_database(path)
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in sql:
        conn.execute(statement)
    conn.close()


BOOKING = ("INSERT INTO bookings (id, profile, settings, modalities, patient, starts_at,"
           " ends_at, duration_s, status, created_by, created_at) VALUES ({id}, 'hc-200', '{{}}',"
           " '[\"thermal\"]', 'P-1', '{start}', '{end}', 600.0, 'booked', 'bob', '{start}')")


def test_overlapping_bookings_from_an_older_file_are_named(tmp_path: Path, pg_url: str) -> None:
    src = tmp_path / "old.sqlite3"
    older_with(src,
               BOOKING.format(id=1, start="2031-05-06T09:00:00+00:00",
                              end="2031-05-06T09:10:00+00:00"),
               BOOKING.format(id=2, start="2031-05-06T09:05:00+00:00",
                              end="2031-05-06T09:15:00+00:00"),
               BOOKING.format(id=3, start="2031-05-06T09:15:00+00:00",  # touches: allowed
                              end="2031-05-06T09:25:00+00:00"),
               *(f"INSERT INTO booking_devices VALUES ({n}, 0, 'device', 'heat-1')"
                 for n in (1, 2, 3)))
    with pytest.raises(MigrationError,
                       match="has 1: bookings 1 and 2 both hold device 'heat-1'"):
        migrate(src, pg_url)
    assert empty_schema(pg_url)


def test_a_row_postgresql_refuses_rolls_the_whole_copy_back(tmp_path: Path,
                                                           pg_url: str) -> None:
    src = tmp_path / "old.sqlite3"
    older_with(src, "INSERT INTO devices (name, profile, port, registered_by, registered_at)"
                    " VALUES ('heat-2', 'hc-200', '/dev/pts/1', 'tom', '2024-01-01')")
    with pytest.raises(MigrationError, match=r"cannot copy devices .*devices_one_per_port"
                                             ".*nothing was kept"):
        migrate(src, pg_url)
    with RecordStore(pg_url) as t:
        assert t.verify_audit().entries == 0 and not t.devices(include_removed=True)
        assert not t.list_sessions()


def test_locations_from_the_command_line(tmp_path: Path) -> None:
    assert location(f"sqlite://{tmp_path}/r.sqlite3") == tmp_path / "r.sqlite3"
    assert location("records.sqlite3") == Path("records.sqlite3")
    assert isinstance(location("postgresql://modctl@db/modctl"), PgUrl)
    with pytest.raises(ValueError, match="no file after sqlite://"):
        location("sqlite://")


def test_the_records_migrate_command(tmp_path: Path, pg_url: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`modctl records migrate --from FILE --to URL`: the report on stdout, exit 0; a
    second run into the now used target is refused (exit 1) and says why."""
    from controller.cli.main import main
    db = tmp_path / "clinic.sqlite3"
    with RecordStore(db) as store:
        sid = store.open_session(profile="hc-200", port="/dev/pts/1", identity={},
                                 operator="alice", patient="P-1", prescription={},
                                 planned_s=1.0)
        store.close_session(sid, "completed", "end", "controller", 1.0, None)
        head = store.verify_audit().head_hash
    assert main(["records", "migrate", "--from", str(db), "--to", pg_url]) == 0
    out = capsys.readouterr().out
    assert f"sha256 {head}" in out and "1 sessions" in out
    assert main(["records", "verify", "--db", pg_url, "--expect-head", head]) == 0
    capsys.readouterr()
    assert main(["records", "migrate", "--from", str(db), "--to", pg_url]) == 1
    assert "already holds records" in capsys.readouterr().err
    assert main(["records", "migrate", "--from", "sqlite://", "--to", pg_url]) == 2
