"""Session records: durability as it happens, the audit chain, crash recovery, errors, threads."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.records import integrity, telemetry
from controller.records import store as records
from controller.records.store import (
    GENESIS_HASH,
    RecordsError,
    RecordStore,
    default_db_path,
    new_session_id,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "records.sqlite3"


@pytest.fixture
def store(db: Path) -> Iterator[RecordStore]:
    with RecordStore(db) as s:
        yield s


def open_one(store: RecordStore, patient: str | None = "P-001", profile: str = "hc-200") -> str:
    return store.open_session(
        profile=profile, port="/dev/pts/9", identity={"model": "HC-200", "serial": "A1"},
        operator="alice", patient=patient, planned_s=600.0,
        prescription={"temperature_c": 40.0, "limits": {"temperature_c": "≤ 45 (clinical)"}})


def raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


# -- storage settings and durability -------------------------------------------------------

def test_wal_foreign_keys_full_sync_and_schema_version(store: RecordStore, db: Path) -> None:
    assert raw(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn = store._conn()
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert raw(db).execute("SELECT version FROM schema_version").fetchone()[0] == \
        records.SCHEMA_VERSION


def test_reopen_keeps_data(db: Path) -> None:
    with RecordStore(db) as s:
        sid = open_one(s)
    with RecordStore(db) as s:
        found = s.get_session(sid)
    assert found is not None and found.status == "open"


def test_each_event_is_visible_to_another_connection_at_once(store: RecordStore,
                                                             db: Path) -> None:
    sid = open_one(store)
    other = raw(db)
    for n in (1, 2, 3):
        assert store.add_event(sid, "command", {"op": "read", "n": n}, t_s=n * 0.1) == n
        rows = other.execute("SELECT seq, kind, detail FROM events WHERE session_id = ?",
                             (sid,)).fetchall()
        assert len(rows) == n and json.loads(rows[-1][2])["n"] == n


def test_event_offset_defaults_to_monotonic_time_since_open(store: RecordStore) -> None:
    sid = open_one(store)
    store.add_event(sid, "state", {"to": "running"})
    event = store.get_session(sid).events[0]  # type: ignore[union-attr]
    assert 0.0 <= event.t_s < 5.0 and event.at.endswith("+00:00")


def test_unknown_event_kind_and_unknown_session_are_refused(store: RecordStore) -> None:
    sid = open_one(store)
    with pytest.raises(ValueError, match="kind"):
        store.add_event(sid, "gossip")
    with pytest.raises(RecordsError, match="FOREIGN KEY"):
        store.add_event("NO-SUCH-SESSION", "note", t_s=0.0)


def test_samples_are_batched_then_flushed(store: RecordStore, db: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sid = open_one(store)
    other = raw(db)

    def count() -> int:
        return int(other.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    store.add_sample(sid, {"pad_c": 39.5})
    assert count() == 0  # buffered
    store.add_event(sid, "reply", {"ok": True})  # rides along with the next event
    assert count() == 1
    store.add_sample(sid, {"pad_c": 39.6})
    store.flush()
    assert count() == 2
    monkeypatch.setattr(telemetry, "SAMPLE_FLUSH_S", 0.0)  # every call is now due
    store.add_sample(sid, {"pad_c": 39.7})
    assert count() == 3
    monkeypatch.setattr(telemetry, "SAMPLE_FLUSH_S", 60.0)
    store.add_sample(sid, {"pad_c": 39.8})
    store.close_session(sid, "completed", "planned end", "timer", 600.0, {"cem43": 0.2})
    assert count() == 4


# -- sessions, audit entries ---------------------------------------------------------------

def test_open_and_close_session_with_audit_entries(store: RecordStore, db: Path) -> None:
    sid = open_one(store)
    store.close_session(sid, "aborted", "operator stop", "operator", 42.5,
                        {"cem43": 0.5, "max_pad_c": 41.2})
    s = store.get_session(sid)
    assert s is not None
    assert (s.status, s.outcome, s.stop_source, s.delivered_s) == \
        ("closed", "aborted", "operator", 42.5)
    assert s.dose == {"cem43": 0.5, "max_pad_c": 41.2} and s.ended_at
    assert s.prescription["limits"]["temperature_c"] == "≤ 45 (clinical)"
    actions = raw(db).execute("SELECT actor, action, subject FROM audit ORDER BY id").fetchall()
    assert actions == [("alice", "session.open", sid), ("alice", "session.close", sid)]
    with pytest.raises(RecordsError, match="not open"):
        store.close_session(sid, "completed", "again", None, 1.0, None)


def test_session_ids_are_sortable_by_time() -> None:
    first = new_session_id()
    time.sleep(0.002)
    second = new_session_id()
    assert len(first) == 26 and first < second


# -- audit trail ---------------------------------------------------------------------------

@pytest.fixture
def chained(store: RecordStore, db: Path) -> sqlite3.Connection:
    """Five audit entries, and a raw connection with the append-only triggers dropped."""
    for n in range(5):
        assert store.audit("alice", "profile.edit", f"hc-{n}", {"n": n}) == n + 1
    assert store.verify_audit().ok
    conn = raw(db)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")
    return conn


def test_intact_chain(store: RecordStore, chained: sqlite3.Connection) -> None:
    result = store.verify_audit()
    assert result.ok and result.entries == 5 and result.broken_id is None
    first = chained.execute("SELECT prev_hash FROM audit WHERE id = 1").fetchone()[0]
    assert first == GENESIS_HASH
    assert result.head_hash == chained.execute("SELECT hash FROM audit WHERE id = 5").fetchone()[0]


def test_audit_is_append_only_without_dropping_triggers(store: RecordStore, db: Path) -> None:
    store.audit("alice", "x", "y")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw(db).execute("UPDATE audit SET actor = 'mallory'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw(db).execute("DELETE FROM audit")


TAMPERING = {
    "edit": ("UPDATE audit SET detail = '{\"n\":99}' WHERE id = 3", 3),
    "delete": ("DELETE FROM audit WHERE id = 2", 3),
    "delete-tail": ("DELETE FROM audit WHERE id >= 4", 4),
    "reorder": ("UPDATE audit SET id = -1 WHERE id = 2; UPDATE audit SET id = 2 WHERE id = 3;"
                " UPDATE audit SET id = 3 WHERE id = -1", 2),
    "insert-middle": ("UPDATE audit SET id = -id WHERE id >= 3; "
                      "UPDATE audit SET id = -id + 1 WHERE id < 0; "
                      "INSERT INTO audit SELECT 3, at, 'mallory', action, subject, detail,"
                      " hash, hash FROM audit WHERE id = 2", 3),
    "insert-end": ("INSERT INTO audit SELECT 6, at, 'mallory', action, subject, detail,"
                   " hash, hash FROM audit WHERE id = 5", 6),
}


@pytest.mark.parametrize("name", TAMPERING)
def test_tampering_is_detected_at_the_first_broken_entry(
        name: str, store: RecordStore, chained: sqlite3.Connection) -> None:
    sql, broken_id = TAMPERING[name]
    chained.executescript(sql)
    result = store.verify_audit()
    assert not result.ok
    assert result.broken_id == broken_id, result.reason
    assert result.reason


def test_edit_with_recomputed_hash_breaks_the_next_link(
        store: RecordStore, chained: sqlite3.Connection) -> None:
    r = chained.execute("SELECT id, at, actor, action, subject, prev_hash FROM audit"
                        " WHERE id = 2").fetchone()
    forged = integrity.audit_hash(r[5], r[0], r[1], "mallory", r[3], r[4], "{}")
    chained.execute("UPDATE audit SET actor = 'mallory', detail = '{}', hash = ? WHERE id = 2",
                    (forged,))
    result = store.verify_audit()
    assert (result.ok, result.broken_id) == (False, 3)


# -- crash recovery ------------------------------------------------------------------------

def open_at_once(store: RecordStore, n: int) -> tuple[list[str], list[BaseException]]:
    """Open `n` sessions on `store` from `n` threads released together."""
    barrier = threading.Barrier(n)
    opened: list[str] = []
    failed: list[BaseException] = []

    def one() -> None:
        barrier.wait()
        try:
            opened.append(open_one(store))
        except BaseException as exc:  # the test reports it
            failed.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return opened, failed


def test_sessions_opened_at_once_on_one_store_all_open(db: Path) -> None:
    # The clinic service opens several sessions on one store from several threads at once:
    # the store's owner lock is taken once, not raced for (a lost race refused a start
    # with "records unavailable: ... cannot hold its owner lock").
    for i in range(20):
        with RecordStore(db.with_name(f"r{i}.sqlite3")) as fresh:
            opened, failed = open_at_once(fresh, 8)
        assert not failed and len(opened) == 8


def test_sessions_left_open_are_marked_interrupted(db: Path) -> None:
    crashed = RecordStore(db)
    sid = open_one(crashed)
    crashed.add_event(sid, "state", {"to": "running"}, t_s=1.0, delivered_s=0.0)
    crashed.add_event(sid, "decision", {"keep": True}, t_s=12.0, delivered_s=12.0,
                      dose={"cem43": 0.1})
    crashed.add_sample(sid, {"pad_c": 41.0}, t_s=12.5, delivered_s=12.5)
    crashed.close()  # as if the process ended: the session was never closed
    with RecordStore(db) as fresh:
        marked = fresh.mark_interrupted_sessions()
        assert [m.id for m in marked] == [sid]
        m = marked[0]
        assert (m.status, m.outcome, m.delivered_s, m.dose) == \
            ("interrupted", "interrupted", 12.5, {"cem43": 0.1})
        assert "nothing was resumed" in (m.reason or "")
        assert m.events[-1].kind == "state" and m.events[-1].detail["state"] == "interrupted"
        audit = fresh.verify_audit()
        # session.open, two event.add, the telemetry batch written at close, session.interrupted
        assert audit.ok and audit.entries == 5
        assert fresh.mark_interrupted_sessions() == []


def test_live_sessions_of_another_store_are_left_alone(db: Path) -> None:
    with RecordStore(db) as live, RecordStore(db) as other:
        sid = open_one(live)
        assert other.mark_interrupted_sessions() == []
        assert live.mark_interrupted_sessions() == []  # its own session is live too
        live.close()
        assert [m.id for m in other.mark_interrupted_sessions()] == [sid]


def test_a_killed_process_leaves_a_session_that_is_marked(db: Path) -> None:
    script = (
        "import os, sys\n"
        "from controller.records.store import RecordStore\n"
        "s = RecordStore(sys.argv[1])\n"
        "sid = s.open_session(profile='us-300', port='p', identity={}, operator='bob',"
        " patient=None, prescription={}, planned_s=300.0)\n"
        "s.add_event(sid, 'state', {'to': 'running'}, delivered_s=7.0)\n"
        "print(sid, flush=True)\n"
        "os._exit(9)\n")
    done = subprocess.run([sys.executable, "-c", script, str(db)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 9, done.stderr
    with RecordStore(db) as fresh:
        marked = fresh.mark_interrupted_sessions()
    assert [(m.id, m.delivered_s) for m in marked] == [(done.stdout.strip(), 7.0)]


def test_no_progress_recorded_means_delivered_unknown(store: RecordStore, db: Path) -> None:
    with RecordStore(db) as crashed:
        sid = open_one(crashed)
    (m,) = store.mark_interrupted_sessions()
    assert m.id == sid and m.delivered_s is None and "unknown" in (m.reason or "")


# -- queries and export --------------------------------------------------------------------

def filled(store: RecordStore) -> list[str]:
    ids = []
    for n, (patient, profile) in enumerate([("P-001", "hc-200"), ("P-002", "us-300"),
                                            ("P-001", "es-4")]):
        sid = open_one(store, patient, profile)
        store.add_event(sid, "command", {"n": n}, t_s=0.5)
        store.close_session(sid, "completed", "planned end", "timer", 600.0,
                            {"energy_j": 100.0 * n, "per_channel": {"a": n}})
        ids.append(sid)
    return ids


def test_list_and_get(store: RecordStore) -> None:
    ids = filled(store)
    assert [s.id for s in store.list_sessions()] == ids[::-1]
    assert [s.id for s in store.list_sessions(patient="P-001")] == [ids[2], ids[0]]
    assert [s.id for s in store.list_sessions(profile="us-300")] == [ids[1]]
    assert len(store.list_sessions(limit=1)) == 1
    got = store.get_session(ids[1][:-2].lower())  # a prefix works, any case
    assert got is not None and got.id == ids[1] and got.events[0].detail == {"n": 1}
    assert store.get_session("NOPE-NOT-THERE") is None
    with pytest.raises(RecordsError, match="ambiguous"):
        store.get_session(ids[0][:4])  # all made within a second share it


def test_export_json(store: RecordStore) -> None:
    ids = filled(store)
    data: dict[str, Any] = json.loads(store.export("json", patient="P-001"))
    assert [s["id"] for s in data["sessions"]] == [ids[0], ids[2]]
    assert data["sessions"][1]["events"][0]["detail"] == {"n": 2}
    assert data["schema_version"] == records.SCHEMA_VERSION


def test_export_csv_flattens_dose(store: RecordStore) -> None:
    ids = filled(store)
    rows = list(csv.DictReader(io.StringIO(store.export("csv"))))
    assert [r["id"] for r in rows] == ids
    assert rows[2]["dose.energy_j"] == "200.0" and rows[2]["dose.per_channel.a"] == "2"
    assert rows[0]["patient"] == "P-001" and rows[0]["outcome"] == "completed"
    assert json.loads(rows[0]["prescription"])["temperature_c"] == 40.0


# -- errors --------------------------------------------------------------------------------

def test_directory_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "sub" / "records.sqlite3"
    with pytest.raises(RecordsError, match=str(path)):
        RecordStore(path)


def test_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(RecordsError, match="cannot be opened") as info:
        RecordStore(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite3"
    path.write_bytes(b"this is not sqlite at all, just some words " * 100)
    with pytest.raises(RecordsError, match="not a modctl records database") as info:
        RecordStore(path)
    assert info.value.path == path and str(path) in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes read-only files")
def test_read_only_database(db: Path) -> None:
    RecordStore(db).close()
    db.chmod(0o444)
    with pytest.raises(RecordsError, match="read-only"):
        RecordStore(db)


def test_disk_full(store: RecordStore) -> None:
    sid = open_one(store)
    conn = store._conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow any more
    with pytest.raises(RecordsError, match="disk is full") as info:
        for n in range(1000):
            store.add_event(sid, "note", {"blob": "x" * 2000, "n": n}, t_s=float(n))
    assert str(store.path) in str(info.value)


def test_missing_database_is_not_created_when_asked(db: Path) -> None:
    with pytest.raises(RecordsError, match="no such file"):
        RecordStore(db, create=False)
    assert not db.exists()


def test_database_from_a_newer_modctl(db: Path) -> None:
    RecordStore(db).close()
    raw(db).execute("UPDATE schema_version SET version = 999")
    with pytest.raises(RecordsError, match="newer modctl"):
        RecordStore(db)


def test_closed_store_refuses_work(db: Path) -> None:
    s = RecordStore(db)
    s.close()
    with pytest.raises(RecordsError, match="closed"):
        s.audit("a", "b", "c")


# -- threads -------------------------------------------------------------------------------

def test_one_writer_and_one_reader_thread(store: RecordStore) -> None:
    sid = open_one(store)
    total, errors, seen = 200, [], []
    stop = threading.Event()

    def write() -> None:
        try:
            for n in range(total):
                store.add_event(sid, "reply", {"n": n}, t_s=n * 0.01)
                store.add_sample(sid, {"n": n}, t_s=n * 0.01)
        except Exception as exc:
            errors.append(exc)
        finally:
            stop.set()

    def read() -> None:
        try:
            while not stop.is_set():
                s = store.get_session(sid)
                assert s is not None
                seen.append(len(s.events))
                store.list_sessions()
                assert store.verify_audit().ok
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert seen and seen == sorted(seen)
    s = store.get_session(sid)
    assert s is not None and [e.seq for e in s.events] == list(range(1, total + 1))


# -- location ------------------------------------------------------------------------------

def test_default_path_precedence(tmp_path: Path) -> None:
    env = {"HOME": "/home/u", "XDG_DATA_HOME": "/xdg", "MODCTL_DB": "/env/r.db"}
    assert default_db_path(tmp_path / "x.db", env) == tmp_path / "x.db"
    assert default_db_path(None, env) == Path("/env/r.db")
    assert default_db_path(None, {**env, "MODCTL_DB": ""}) == \
        Path("/xdg/modctl/records.sqlite3")
    assert default_db_path(None, {"HOME": "/home/u", "XDG_DATA_HOME": "relative"}) == \
        Path("/home/u/.local/share/modctl/records.sqlite3")
    assert default_db_path(None, {"HOME": "/home/u"}) == \
        Path("/home/u/.local/share/modctl/records.sqlite3")


def test_store_without_a_path_uses_the_environment(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODCTL_DB", str(tmp_path / "env.sqlite3"))
    with RecordStore() as s:
        assert s.path == tmp_path / "env.sqlite3"
    assert (tmp_path / "env.sqlite3").exists()


# -- schema 3 fields and CSV injection ----------------------------------------------------

def test_profile_file_identity_and_device_elapsed_are_recorded(store: RecordStore) -> None:
    sid = store.open_session(profile="hc-200", port="p", identity={}, operator="a",
                             patient=None, prescription={}, planned_s=60.0,
                             profile_path="/etc/modctl/hc.yaml", profile_sha256="ab" * 32)
    store.set_session_identity(sid, {"model": "HC-200", "serial": "A1", "firmware": "2.1"})
    store.close_session(sid, "completed", "end", "timer", 60.0, None, device_elapsed_s=59.5)
    s = store.get_session(sid)
    assert s is not None and s.identity["serial"] == "A1"
    assert (s.profile_path, s.profile_sha256, s.delivered_s, s.device_elapsed_s) == \
        ("/etc/modctl/hc.yaml", "ab" * 32, 60.0, 59.5)
    assert s.to_json()["device_elapsed_s"] == 59.5 and s.to_json()["profile_sha256"]
    with pytest.raises(RecordsError, match="not open"):
        store.set_session_identity(sid, {"model": "other"})
    assert store.verify_audit().ok


def test_an_interrupted_session_keeps_the_device_reported_elapsed_time(db: Path) -> None:
    with RecordStore(db) as crashed:
        sid = open_one(crashed)
        crashed.add_sample(sid, {"pad_c": 40.0, "elapsed_s": 11.0}, t_s=12.0, delivered_s=12.0)
        crashed.add_sample(sid, {"pad_c": 40.0, "elapsed_s": 12.5}, t_s=13.0, delivered_s=13.0)
        crashed.add_sample(sid, {"pad_c": 40.0}, t_s=14.0, delivered_s=14.0)
    with RecordStore(db) as fresh:
        (m,) = fresh.mark_interrupted_sessions()
        assert (m.delivered_s, m.device_elapsed_s) == (14.0, 12.5)
        assert m.events[-1].detail["device_elapsed_s"] == 12.5
        assert fresh.verify_audit().ok


def test_csv_export_neutralises_formula_cells_but_keeps_numbers(store: RecordStore) -> None:
    sid = store.open_session(profile="hc-200", port="=1+1", identity={}, operator="@SUM(A1)",
                             patient="+P-1", prescription={}, planned_s=60.0)
    store.close_session(sid, "fault", "-2+3|cmd", "\tx", -1.5,
                        {"delta_c": -0.5, "note": "=HYPERLINK(\"x\")", "r": "\rz"})
    (row,) = list(csv.DictReader(io.StringIO(store.export("csv"), newline="")))
    assert (row["port"], row["operator"], row["patient"], row["reason"], row["stop_source"]) \
        == ("'=1+1", "'@SUM(A1)", "'+P-1", "'-2+3|cmd", "'\tx")
    assert (row["dose.note"], row["dose.r"]) == ("'=HYPERLINK(\"x\")", "'\rz")
    assert (row["delivered_s"], row["dose.delta_c"]) == ("-1.5", "-0.5")  # numbers stay numbers


def test_safe_cell() -> None:
    from controller.records.csv_safe import safe_cell, safe_row
    assert [safe_cell(v) for v in ("=a", "+a", "-a", "@a", "\ta", "\ra", "a=", "", -3, 2.5,
                                   None)] == \
        ["'=a", "'+a", "'-a", "'@a", "'\ta", "'\ra", "a=", "", -3, 2.5, None]
    assert safe_row({"a": "=x", "b": -1}) == {"a": "'=x", "b": -1}
