"""The records on PostgreSQL, shared by several rooms: the same behaviour as on SQLite, and the
cross-room guarantees enforced by the database itself (issue 14 §3), against the real server."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from controller.records.clinic_tables import BookingConflict, ClinicError
from controller.records.store import RecordsError, RecordStore
from controller.records.target import PgUrl, as_target
from controller.records.user_table import UserTableError

AT = datetime(2031, 5, 6, 9, 0, tzinfo=UTC)
RACERS = 2           # processes, as two rooms' services
ATTEMPTS = 50        # bookings each tries for the same slot (100 in all)
WRITERS_SESSIONS = 6 # sessions each writer process records at once with the other


def open_one(store: RecordStore, patient: str = "P-001") -> str:
    return store.open_session(profile="hc-200", port="/dev/pts/9", identity={},
                              operator="alice", patient=patient, planned_s=60.0,
                              prescription={"temperature_c": 40.0})


def test_a_url_is_a_shared_database_and_its_password_never_shows() -> None:
    url = as_target("postgresql://clinic:s3cret@db.example:5432/modctl")
    assert isinstance(url, PgUrl)
    assert str(url) == f"{url}" == "postgresql://clinic@db.example:5432/modctl"
    assert "s3cret" not in repr(url) and "s3cret" in url.raw
    query = as_target("postgresql://clinic@db/modctl?sslmode=require&password=s3cret")
    assert str(query) == "postgresql://clinic@db/modctl?sslmode=require"


def test_a_url_that_went_through_path_is_still_a_url() -> None:
    from pathlib import Path
    url = as_target(Path("postgresql://clinic@db:5432/modctl?options=-csearch_path%3Dx"))
    assert isinstance(url, PgUrl) and url.raw == "postgresql://clinic@db:5432/modctl" \
        "?options=-csearch_path%3Dx"


def test_an_unreachable_server_is_a_clear_refusal() -> None:
    with pytest.raises(RecordsError, match="cannot be reached") as caught:
        RecordStore("postgresql://nobody:pw@127.0.0.1:1/none")
    assert "pw" not in str(caught.value)


def test_sessions_events_telemetry_and_the_chain(pg_url: str) -> None:
    with RecordStore(pg_url) as store:
        assert store.shared
        sid = open_one(store)
        store.set_session_identity(sid, {"model": "HC-200", "serial": "A1"})
        store.add_event(sid, "state", {"state": "running"}, t_s=0.1)
        for i in range(3):
            store.add_sample(sid, {"elapsed_s": i, "temperature_c": 40.0}, t_s=float(i))
        store.close_session(sid, "completed", "planned end", "controller", 3.0,
                            {"cem43_min": 0.2}, device_elapsed_s=3.0)
        row = store.get_session(sid[:10].lower())  # a prefix, any case
        assert row is not None and row.identity["serial"] == "A1"
        assert [s.t_s for s in store.get_samples(sid)] == [0.0, 1.0, 2.0]
        assert [r.id for r in store.list_sessions(patient="P-001")] == [sid]
        assert store.list_sessions(profile="us-300") == []
        result = store.verify_audit()
        assert result.ok, result.reason
        assert store.verify_audit(expect_head=result.head_hash).ok


def test_tampering_is_found_on_postgresql_too(pg_url: str) -> None:
    with RecordStore(pg_url) as store:
        sid = open_one(store)
        store.close_session(sid, "completed", "end", "controller", 1.0, None)
    with psycopg.connect(pg_url, autocommit=True) as raw:
        raw.execute("ALTER TABLE sessions DISABLE TRIGGER ALL")
        raw.execute("UPDATE sessions SET delivered_s = 600 WHERE id = %s", (sid,))
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            raw.execute("DELETE FROM audit")
        with pytest.raises(psycopg.errors.RestrictViolation, match="never deleted"):
            raw.execute("TRUNCATE audit")          # row triggers do not see a TRUNCATE
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            raw.execute("UPDATE audit_high SET seq = 1")  # hiding a cut tail
    with RecordStore(pg_url) as store:
        result = store.verify_audit()
        assert not result.ok and result.table == "sessions" and result.key == sid


def test_accounts_compare_without_case(pg_url: str) -> None:
    with RecordStore(pg_url) as store:
        store.add_user("Ada", "admin", "hash", "root")
        assert store.user("ADA") is not None and store.user("ada").name == "Ada"  # type: ignore[union-attr]
        with pytest.raises(UserTableError, match="already exists"):
            store.add_user("ada", "clinician", "hash", "root")


def test_a_dead_owner_s_session_is_interrupted_a_live_one_is_not(pg_url: str) -> None:
    live = RecordStore(pg_url)
    dead = RecordStore(pg_url)
    kept = open_one(live, "P-LIVE")
    lost = open_one(dead, "P-DEAD")
    dead._db.backend.release()  # as if its process died: its owner lock is gone
    try:
        with RecordStore(pg_url) as third:
            marked = [r.id for r in third.mark_interrupted_sessions()]
            assert marked == [lost]
            assert third.get_session(kept).status == "open"  # type: ignore[union-attr]
    finally:
        live.close()


def test_the_database_refuses_a_double_booking_itself(pg_url: str) -> None:
    with RecordStore(pg_url) as store:
        store.add_device("heat-1", "hc-200", "/dev/ttyUSB0", "tom", room="A")
        store.add_booking(devices={"session": "heat-1"}, profile="hc-200", plan=None,
                          settings={}, modalities=["thermal"], patient="P-1", starts_at=AT,
                          duration_s=900, actor="alice", min_interval_s=0)
    # Past modctl's own check: straight into the tables, as a buggy or foreign writer would.
    with psycopg.connect(pg_url, autocommit=True) as raw:
        raw.execute("INSERT INTO bookings (id, profile, settings, modalities, patient, starts_at,"
                    " ends_at, duration_s, status, created_by, created_at) VALUES (99, 'hc-200',"
                    " '{}', ',thermal,', 'P-2', %s, %s, 600, 'booked', 'x', 'now')",
                    ((AT + timedelta(minutes=10)).isoformat(),
                     (AT + timedelta(minutes=20)).isoformat()))
        with pytest.raises(psycopg.errors.ExclusionViolation):
            raw.execute("INSERT INTO booking_devices (booking_id, position, role, device)"
                        " VALUES (99, 0, 'session', 'heat-1')")
        # A cancelled booking no longer holds the device.
        raw.execute("UPDATE bookings SET status = 'cancelled' WHERE id = 1")
        raw.execute("INSERT INTO booking_devices (booking_id, position, role, device)"
                    " VALUES (99, 0, 'session', 'heat-1')")


def _race_bookings(url: str, room: str, start: multiprocessing.synchronize.Event,
                   wins: multiprocessing.Queue[int]) -> None:  # type: ignore[name-defined]
    won = 0
    with RecordStore(url) as store:
        start.wait(10)
        for i in range(ATTEMPTS):
            try:
                store.add_booking(devices={"session": "heat-1"}, profile="hc-200", plan=None,
                                  settings={}, modalities=["thermal"],
                                  patient=f"P-{room}{i}", starts_at=AT, duration_s=900,
                                  actor=room, min_interval_s=0)
                won += 1
            except BookingConflict:
                pass
    wins.put(won)


def test_two_rooms_racing_100_bookings_for_one_slot_exactly_one_wins(pg_url: str) -> None:
    with RecordStore(pg_url) as store:
        store.add_device("heat-1", "hc-200", "/dev/ttyUSB0", "tom", room="A")
    ctx = multiprocessing.get_context("spawn")
    start, wins = ctx.Event(), ctx.Queue()
    racers = [ctx.Process(target=_race_bookings, args=(pg_url, room, start, wins))
              for room in "AB"[:RACERS]]
    for p in racers:
        p.start()
    start.set()
    results = [wins.get(timeout=60) for _ in racers]
    for p in racers:
        p.join(10)
    assert sum(results) == 1, results
    with RecordStore(pg_url) as store:
        assert len(store.bookings(None)) == 1
        assert store.verify_audit().ok


def _write_sessions(url: str, tag: str, start: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    with RecordStore(url) as store:
        start.wait(10)
        for i in range(WRITERS_SESSIONS):
            sid = open_one(store, f"P-{tag}{i}")
            store.add_event(sid, "state", {"state": "running"}, t_s=0.1)
            store.add_sample(sid, {"elapsed_s": 0.5}, t_s=0.5)
            store.audit(tag, "note", sid, {"i": i})
            store.close_session(sid, "completed", "end", "controller", 1.0, None)


def test_concurrent_rooms_keep_one_verifiable_chain(pg_url: str) -> None:
    RecordStore(pg_url).close()  # the schema, made once
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    writers = [ctx.Process(target=_write_sessions, args=(pg_url, tag, start)) for tag in "AB"]
    for p in writers:
        p.start()
    start.set()
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    with RecordStore(pg_url) as store:
        assert len(store.list_sessions(limit=None)) == 2 * WRITERS_SESSIONS
        result = store.verify_audit()
        assert result.ok, result.reason
        assert result.entries >= 2 * WRITERS_SESSIONS * 4


def test_a_device_is_registered_once_across_rooms(pg_url: str) -> None:
    with RecordStore(pg_url) as a, RecordStore(pg_url) as b:
        a.add_device("heat-1", "hc-200", "/dev/ttyUSB0", "tom", room="A", model="HC-200",
                     serial="S1")
        with pytest.raises(ClinicError, match="already registered"):
            b.add_device("heat-1", "hc-200", "/dev/ttyUSB1", "tom", room="B")
        with pytest.raises(ClinicError, match="serial S1 is already registered"):
            b.add_device("heat-2", "hc-200", "/dev/ttyUSB1", "tom", room="B", model="HC-200",
                         serial="S1")
        # The same port name on another room's PC is another device.
        b.add_device("heat-3", "hc-200", "/dev/ttyUSB0", "tom", room="B")
        with pytest.raises(ClinicError, match="already the port"):
            b.add_device("heat-4", "hc-200", "/dev/ttyUSB0", "tom", room="B")
    with psycopg.connect(pg_url, autocommit=True) as raw, \
            pytest.raises(psycopg.errors.UniqueViolation):
        raw.execute("INSERT INTO devices (name, profile, port, registered_by, registered_at,"
                    " room) VALUES ('heat-5', 'hc-200', '/dev/ttyUSB0', 'x', 'now', 'A')")


def test_the_calibration_gate_reads_the_shared_records(pg_url: str) -> None:
    """A technician calibrates in room A; room B's store sees it at once."""
    with RecordStore(pg_url) as a, RecordStore(pg_url) as b:
        a.add_device("heat-1", "hc-200", "/dev/ttyUSB0", "tom", room="A")
        assert b.calibration_status("heat-1", AT).last is None
        a.add_calibration(device="heat-1", profile="hc-200", technician="tom",
                          instrument="thermometer", instrument_id="T-1", before={}, after={},
                          passed=True, performed_at=AT, next_due=date(2031, 11, 6))
        status = b.calibration_status("heat-1", AT + timedelta(days=1))
        assert status.last is not None and not status.overdue


def test_calibrations_and_notes(pg_url: str) -> None:
    with RecordStore(pg_url) as store:
        store.add_device("heat-1", "hc-200", "/dev/ttyUSB0", "tom", room="A")
        cal = store.add_calibration(device="heat-1", profile="hc-200", technician="tom",
                                    instrument="thermometer", instrument_id="T-1",
                                    before={"x": 1}, after={"x": 1}, passed=True,
                                    performed_at=AT, next_due=date(2031, 11, 6))
        assert cal == 1 and store.calibrations("heat-1")[0].passed is True
        sid = open_one(store)
        note = store.add_note(sid[:8], actor="carol", pain_before=6, pain_after=3)
        assert store.notes(sid) == [note]
        assert store.verify_audit().ok
