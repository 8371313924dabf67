"""Tamper evidence over the records rows (issue 10 item 5): every row write is sealed in the
audit chain with its content hash, and `records verify` checks the rows, not only the chain."""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.cli import records_cmd
from controller.records import integrity
from controller.records import store as records
from controller.records.integrity import GENESIS_HASH, audit_hash
from controller.records.store import RecordStore

NOW = datetime.now(UTC).replace(microsecond=0)
PROFILE = {"id": "hc-200", "path": "/etc/modctl/hc-200.yaml", "sha256": "ab" * 32}


def open_one(store: RecordStore, patient: str) -> str:
    return store.open_session(profile="hc-200", port="/dev/pts/9", identity={},
                              operator="alice", patient=patient, planned_s=600.0,
                              prescription={"temperature_c": 40.0},
                              profile_path=PROFILE["path"], profile_sha256=PROFILE["sha256"])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Devices, a calibration, a booking and two closed sessions with events and telemetry."""
    path = tmp_path / "records.sqlite3"
    with RecordStore(path) as s:
        s.add_device("heat-1", "hc-200", "/dev/pts/9", "tom", serial="A1", model="HC-200",
                     profile_path=PROFILE["path"], profile_sha256=PROFILE["sha256"],
                     port_real="/dev/pts/9")
        s.add_device("heat-2", "hc-200", "/dev/pts/8", "tom")
        s.remove_device("heat-2", "tom", "broken")
        s.add_calibration(device="heat-1", profile="hc-200", technician="tom",
                          instrument="probe", instrument_id="T-1", before={"c": 40.2},
                          after={"c": 40.0}, passed=True, performed_at=NOW,
                          next_due=date.today() + timedelta(days=30))
        booking = s.add_booking(devices={"device": "heat-1"}, profile="hc-200", plan=None,
                                settings={"temperature_c": "40"}, modalities=["thermal"],
                                patient="P-001", starts_at=NOW + timedelta(days=1),
                                duration_s=600.0, actor="bob", min_interval_s=3600.0,
                                profiles={"session": PROFILE})
        s.cancel_booking(booking.id, "bob", "patient ill")
        for patient, outcome in (("P-001", "completed"), ("P-002", "fault")):
            sid = open_one(s, patient)
            s.set_session_identity(sid, {"model": "HC-200", "serial": "A1"})
            for n in range(3):
                s.add_sample(sid, {"pad_c": 39.0 + n, "elapsed_s": float(n)}, t_s=float(n))
                s.add_event(sid, "reply", {"n": n}, t_s=n + 0.5)
            s.add_sample(sid, {"pad_c": 42.0}, t_s=3.0)
            s.flush()
            s.close_session(sid, outcome, "done", "timer", 3.0, {"cem43": 0.1},
                            device_elapsed_s=2.9)
        assert s.verify_audit().ok
    return path


@pytest.fixture
def store(db: Path) -> Iterator[RecordStore]:
    with RecordStore(db) as s:
        yield s


def raw(db: Path) -> sqlite3.Connection:
    """What someone with the file can do: no foreign keys, no triggers."""
    conn = sqlite3.connect(db, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        conn.execute(f"DROP TRIGGER {name}")
    return conn


def sid_of(db: Path, patient: str) -> str:
    return str(raw(db).execute("SELECT id FROM sessions WHERE patient = ?",
                               (patient,)).fetchone()[0])


def fails(store: RecordStore, table: str, *words: str) -> str:
    result = store.verify_audit()
    assert not result.ok, "tampering went unnoticed"
    assert result.table == table, result.reason
    for word in words:
        assert word in result.reason, result.reason
    return result.reason


def test_untampered_records_verify_and_report_the_head(store: RecordStore, db: Path) -> None:
    result = store.verify_audit()
    conn = raw(db)
    head = conn.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()[0]
    count = conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    assert (result.ok, result.entries, result.head_hash) == (True, count, head)
    # every kind of row is sealed in the chain
    tables = {r["table"] for (d,) in conn.execute("SELECT detail FROM audit")
              for r in json.loads(d).get("rows", [])}
    assert tables == {"sessions", "events", "samples", "devices", "bookings", "calibrations"}


def test_an_edited_event(store: RecordStore, db: Path) -> None:
    sid = sid_of(db, "P-002")
    raw(db).execute("UPDATE events SET detail = '{\"n\":7}' WHERE session_id = ? AND seq = 2",
                    (sid,))
    fails(store, "events", f"{sid}/2", "changed")


def test_an_outcome_changed_from_fault_to_completed(store: RecordStore, db: Path) -> None:
    sid = sid_of(db, "P-002")
    raw(db).execute("UPDATE sessions SET outcome = 'completed', reason = 'planned end'"
                    " WHERE id = ?", (sid,))
    fails(store, "sessions", sid, "changed")


def test_a_whole_session_deleted(store: RecordStore, db: Path) -> None:
    sid = sid_of(db, "P-002")
    conn = raw(db)
    for table, column in (("samples", "session_id"), ("events", "session_id"),
                          ("sessions", "id")):
        conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (sid,))
    fails(store, "sessions", sid, "gone")


def test_a_forged_calibration_row(store: RecordStore, db: Path) -> None:
    conn = raw(db)
    conn.execute("INSERT INTO calibrations (device, profile, technician, instrument,"
                 " instrument_id, before, after, passed, performed_at, next_due, recorded_at)"
                 " SELECT 'heat-1', profile, 'mallory', instrument, instrument_id, before,"
                 " after, 1, performed_at, '2999-01-01', recorded_at FROM calibrations")
    assert store.calibration_status("heat-1", NOW + timedelta(days=400)).overdue is False
    fails(store, "calibrations", "calibrations row 2", "no audit entry")


def test_the_tail_of_the_chain_cut_with_the_highest_id(store: RecordStore, db: Path) -> None:
    conn = raw(db)
    keep = conn.execute("SELECT MAX(id) FROM audit").fetchone()[0] - 3
    conn.execute("DELETE FROM audit WHERE id > ?", (keep,))
    conn.execute("UPDATE audit_high SET seq = ?", (keep,))
    reason = fails(store, "sessions", sid_of(db, "P-002"))  # its close was in the cut tail
    assert "changed after audit entry" in reason  # it is checked against its entry before


def test_the_audit_table_emptied(store: RecordStore, db: Path) -> None:
    conn = raw(db)
    conn.execute("DELETE FROM audit")
    conn.execute("UPDATE audit_high SET seq = 0")
    result = store.verify_audit()
    assert (result.ok, result.entries, result.head_hash) == (False, 0, GENESIS_HASH)
    assert "no audit entry" in result.reason and result.table == "sessions"


@pytest.mark.parametrize(("sql", "table"), [
    ("UPDATE samples SET data = '{\"pad_c\":39.0}' WHERE rowid = 2", "samples"),
    ("DELETE FROM samples WHERE rowid = 3", "samples"),
    ("INSERT INTO samples SELECT session_id, 9.0, data, delivered_s, dose, NULL FROM samples"
     " LIMIT 1", "samples"),
    ("DELETE FROM events WHERE seq = 3", "events"),
    ("UPDATE devices SET serial = 'B2' WHERE name = 'heat-1'", "devices"),
    ("UPDATE devices SET removed = 0 WHERE name = 'heat-2'", "devices"),
    ("UPDATE bookings SET status = 'booked'", "bookings"),
    ("UPDATE booking_devices SET device = 'heat-2'", "bookings"),
])
def test_other_rows_changed_added_or_deleted(store: RecordStore, db: Path, sql: str,
                                             table: str) -> None:
    raw(db).execute(sql)
    fails(store, table)


def rewrite_chain(conn: sqlite3.Connection) -> None:
    """What verify cannot see alone: every row hash and every link recomputed from genesis."""
    prev = GENESIS_HASH
    rows = conn.execute("SELECT * FROM audit ORDER BY id").fetchall()
    for entry_id, at, actor, action, subject, detail, _, _ in rows:
        data: dict[str, Any] = json.loads(detail)
        for ref in data.get("rows", []):
            if ref["table"] == "sessions":
                r = conn.execute("SELECT * FROM sessions WHERE id = ?", (ref["key"],))
                names = [c[0] for c in r.description]
                ref["sha256"] = __import__("hashlib").sha256(integrity.dumps(
                    dict(zip(names, r.fetchone(), strict=True))).encode()).hexdigest()
        detail = integrity.dumps(data)
        digest = audit_hash(prev, entry_id, at, actor, action, subject, detail)
        conn.execute("UPDATE audit SET detail = ?, prev_hash = ?, hash = ? WHERE id = ?",
                     (detail, prev, digest, entry_id))
        prev = digest


def test_a_chain_rewritten_from_genesis_is_caught_only_by_the_head_kept_elsewhere(
        store: RecordStore, db: Path) -> None:
    yesterday = store.verify_audit().head_hash
    sid = open_one(store, "P-003")  # today's work goes on: yesterday's head stays in the chain
    store.close_session(sid, "completed", "end", "timer", 1.0, None)
    assert store.verify_audit(expect_head=yesterday).ok
    conn = raw(db)
    conn.row_factory = None
    conn.execute("UPDATE sessions SET outcome = 'completed' WHERE patient = 'P-002'")
    rewrite_chain(conn)
    assert store.verify_audit().ok  # consistent: the chain alone cannot tell
    result = store.verify_audit(expect_head=yesterday)
    assert not result.ok and yesterday in result.reason and "rewritten" in result.reason


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="modctl")
    records_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["records", *argv])
    status: int = args.run(args)
    return status


def test_records_verify_prints_the_head_and_names_the_first_problem(
        db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("verify", "--db", str(db)) == 0
    out = capsys.readouterr().out
    head = raw(db).execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()[0]
    count = raw(db).execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    assert f"chain head: {count} entries, sha256 {head}" in out
    assert run_cli("verify", "--db", str(db), "--expect-head", head.upper()) == 0
    capsys.readouterr()
    sid = sid_of(db, "P-002")
    raw(db).execute("UPDATE sessions SET outcome = 'completed' WHERE id = ?", (sid,))
    assert run_cli("verify", "--db", str(db)) == 1
    captured = capsys.readouterr()
    assert "chain head:" in captured.out
    assert f"sessions row {sid} was changed" in captured.err
    assert "Traceback" not in captured.err and len(captured.err.splitlines()) == 1
    assert run_cli("verify", "--db", str(db), "--expect-head", "1" * 64) == 1
    with pytest.raises(SystemExit) as info:
        run_cli("verify", "--db", str(db), "--expect-head", "not-a-hash")
    assert info.value.code == 2


# -- upgrade from schema 2 -----------------------------------------------------------------

def schema_2_database(path: Path) -> str:
    """A database as modctl wrote it before schema 3: rows without row hashes in the chain."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (2)")
    for step in records.MIGRATIONS[:2]:
        for statement in step:
            conn.execute(statement)
    sid = "01J00000000000000000000000"
    conn.execute("INSERT INTO sessions (id, profile, port, identity, operator, patient,"
                 " prescription, planned_s, started_at, status, outcome, reason, delivered_s,"
                 " ended_at) VALUES (?, 'hc-200', '/dev/pts/1', '{}', 'alice', 'P-9', '{}',"
                 " 60.0, '2024-01-01T10:00:00.000+00:00', 'closed', 'fault', 'pad hot', 12.0,"
                 " '2024-01-01T10:00:12.000+00:00')", (sid,))
    for seq in (1, 2):
        conn.execute("INSERT INTO events VALUES (?, ?, ?, '2024-01-01T10:00:01.000+00:00',"
                     " 'reply', '{}', NULL, NULL)", (sid, seq, float(seq)))
    conn.execute("INSERT INTO samples VALUES (?, 1.0, '{\"pad_c\":41.0}', 1.0, NULL)", (sid,))
    conn.execute("INSERT INTO devices (name, profile, port, serial, registered_by,"
                 " registered_at) VALUES ('heat-1', 'hc-200', '/dev/pts/1', NULL, 'tom',"
                 " '2024-01-01T09:00:00.000+00:00')")
    conn.execute("INSERT INTO calibrations (device, profile, technician, instrument,"
                 " instrument_id, before, after, passed, performed_at, next_due, recorded_at)"
                 " VALUES ('heat-1', 'hc-200', 'tom', 'probe', 'T-1', '{}', '{}', 1,"
                 " '2024-01-01T09:00:00+00:00', '2024-02-01', '2024-01-01T09:00:00.000+00:00')")
    conn.execute("INSERT INTO audit VALUES (1, '2024-01-01T10:00:00.000+00:00', 'alice',"
                 " 'session.open', ?, '{}', ?, ?)",
                 (sid, GENESIS_HASH, audit_hash(GENESIS_HASH, 1,
                                                "2024-01-01T10:00:00.000+00:00", "alice",
                                                "session.open", sid, "{}")))
    conn.close()
    return sid


def test_a_schema_2_database_is_upgraded_with_a_baseline(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    sid = schema_2_database(path)
    with RecordStore(path) as s:
        old = s.get_session(sid)
        assert old is not None and (old.profile_path, old.device_elapsed_s) == ("", None)
        result = s.verify_audit()
        assert result.ok and result.entries == 2, result.reason  # the old entry + baseline
        new = open_one(s, "P-10")  # later writes are sealed one by one as usual
        s.add_sample(new, {"pad_c": 40.0}, t_s=1.0)
        s.add_event(new, "note", t_s=1.0)
        s.close_session(new, "completed", "end", "timer", 1.0, None)
        assert s.verify_audit().ok
        (baseline,) = [json.loads(d) for (d,) in s._conn().execute(
            "SELECT detail FROM audit WHERE action = 'records.baseline'")]
        assert baseline["from_schema"] == 2 and sid in baseline["sessions"]
    version = raw(path).execute("SELECT version FROM schema_version").fetchone()[0]
    assert version == records.SCHEMA_VERSION == 6
    for sql, table in (("UPDATE events SET detail = '{\"x\":1}' WHERE seq = 1", "events"),
                       ("UPDATE samples SET data = '{\"pad_c\":39.0}' WHERE batch IS NULL",
                        "samples"),
                       ("UPDATE calibrations SET passed = 0", "calibrations")):
        copy = tmp_path / f"{table}.sqlite3"
        with RecordStore(path) as s, sqlite3.connect(copy) as backup:
            s._conn().backup(backup)
        raw(copy).execute(sql)
        with RecordStore(copy) as s:
            result = s.verify_audit()
            assert not result.ok and result.table == table, result.reason
            assert "baseline" in result.reason or "changed" in result.reason
