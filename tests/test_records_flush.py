"""Records write failures mid-session (issue 10 item 4): telemetry that could not be written is
kept and written later, in order, once; every failure reaches the failure listeners from
whichever thread hit it; a periodic flush job never prints a traceback."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.records import telemetry
from controller.records.store import RecordsError, RecordStore

# Big enough that every sample needs a new database page (4 KiB): a full disk refuses it.
BLOB = "x" * 5000
UNLIMITED_PAGES = 1_073_741_823  # SQLite's default max_page_count


def disk_full(conn: sqlite3.Connection) -> None:
    """SQLITE_FULL from now on for writes that grow the file (on this connection)."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")


def disk_free(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA max_page_count = {UNLIMITED_PAGES}")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordStore]:
    monkeypatch.setattr(telemetry, "SAMPLE_FLUSH_S", 3600.0)  # flush only when told to
    with RecordStore(tmp_path / "records.sqlite3") as s:
        yield s


def open_one(store: RecordStore) -> str:
    return store.open_session(profile="hc-200", port="/dev/pts/9", identity={},
                              operator="alice", patient="P-001", prescription={},
                              planned_s=600.0)


def written(store: RecordStore, sid: str) -> list[int]:
    return [s.data["n"] for s in store.get_samples(sid)]


def test_a_failed_flush_keeps_the_batch_and_the_next_flush_writes_it_in_order_once(
        store: RecordStore) -> None:
    sid = open_one(store)
    conn = store._conn()
    for n in range(1, 4):
        store.add_sample(sid, {"n": n, "blob": BLOB}, t_s=float(n))
    disk_full(conn)
    with pytest.raises(RecordsError, match="disk is full"):
        store.flush()
    store.add_sample(sid, {"n": 4, "blob": BLOB}, t_s=4.0)  # arrives while the disk is full
    with pytest.raises(RecordsError, match="disk is full"):
        store.flush()
    disk_free(conn)
    store.add_sample(sid, {"n": 5, "blob": BLOB}, t_s=5.0)
    store.flush()
    assert written(store, sid) == [1, 2, 3, 4, 5]
    store.flush()  # nothing left over to write twice
    assert written(store, sid) == [1, 2, 3, 4, 5]
    assert store.verify_audit().ok


def test_samples_taken_by_a_failed_event_or_close_are_kept(store: RecordStore) -> None:
    sid = open_one(store)
    conn = store._conn()
    store.add_sample(sid, {"n": 1, "blob": BLOB}, t_s=1.0)
    disk_full(conn)
    with pytest.raises(RecordsError, match="disk is full"):
        store.add_event(sid, "note", {"blob": BLOB}, t_s=1.5)
    store.add_sample(sid, {"n": 2, "blob": BLOB}, t_s=2.0)
    with pytest.raises(RecordsError, match="disk is full"):
        store.close_session(sid, "fault", "records", None, 2.0, None)
    disk_free(conn)
    store.close_session(sid, "fault", "records", None, 2.0, None)
    assert written(store, sid) == [1, 2]
    assert store.verify_audit().ok


def test_the_buffer_is_bounded_and_says_so_when_full(store: RecordStore,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "SAMPLE_BUFFER_MAX", 6)
    monkeypatch.setattr(telemetry, "SAMPLE_BATCH_MAX", 3)
    heard: list[RecordsError] = []
    store.add_failure_listener(heard.append)
    sid = open_one(store)
    conn = store._conn()
    disk_full(conn)
    for n in range(1, 3):
        store.add_sample(sid, {"n": n, "blob": BLOB}, t_s=float(n))
    for n in range(3, 7):  # each one makes the buffer due: the write fails, the sample stays
        with pytest.raises(RecordsError, match="disk is full"):
            store.add_sample(sid, {"n": n, "blob": BLOB}, t_s=float(n))
    with pytest.raises(RecordsError, match=r"6 samples are already waiting.*SAMPLE_BUFFER_MAX"):
        store.add_sample(sid, {"n": 7, "blob": BLOB}, t_s=7.0)
    assert "SAMPLE_BUFFER_MAX" in str(heard[-1]) and len(heard) == 5
    disk_free(conn)
    store.flush()
    assert written(store, sid) == [1, 2, 3, 4, 5, 6]  # the refused one, and only it, is missing


def test_listeners_hear_a_failure_in_another_thread(store: RecordStore,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    sid = open_one(store)
    heard: list[tuple[str, RecordsError]] = []

    def listener(error: RecordsError) -> None:
        assert not store._db._wlock.locked()  # called outside the write lock
        heard.append((threading.current_thread().name, error))

    def broken(error: RecordsError) -> None:
        raise RuntimeError("listener bug")

    store.add_failure_listener(broken)
    store.add_failure_listener(listener)
    store.add_sample(sid, {"n": 1, "blob": BLOB}, t_s=1.0)

    def flush_job() -> None:
        disk_full(store._conn())  # this thread's own connection
        store.flush_quietly()  # told the listeners; raises nothing

    job = threading.Thread(target=flush_job, name="flush-job")
    with caplog.at_level(logging.ERROR, logger="controller.records.database"):
        job.start()
        job.join(10)
    assert [(name, "disk is full" in str(e)) for name, e in heard] == [("flush-job", True)]
    assert "listener bug" in caplog.text  # logged, not raised
    store.remove_failure_listener(listener)
    store.remove_failure_listener(broken)
    store.add_event(sid, "note", t_s=2.0)  # this thread's disk is fine: the batch goes now
    assert written(store, sid) == [1]


def test_every_write_path_tells_the_listeners_but_refusals_do_not(store: RecordStore) -> None:
    sid = open_one(store)
    heard: list[str] = []
    store.add_failure_listener(lambda e: heard.append(str(e)))
    with pytest.raises(RecordsError, match="FOREIGN KEY"):
        store.add_event("NO-SUCH-SESSION", "note", t_s=0.0)  # the database refused the write
    disk_full(store._conn())
    with pytest.raises(RecordsError):
        store.audit("alice", "note", "x", {"blob": BLOB})
    with pytest.raises(RecordsError):
        store.close_session(sid, "completed", "end", "timer", 1.0, {"blob": BLOB})
    assert len(heard) == 3 and all(str(store.path) in h for h in heard)
    disk_free(store._conn())
    store.close_session(sid, "completed", "end", "timer", 1.0, None)
    with pytest.raises(RecordsError, match="not open"):  # modctl's own refusal, not a failure
        store.close_session(sid, "completed", "again", "timer", 1.0, None)
    assert len(heard) == 3


SCHEDULED = """
import sys, time
from controller.records.store import RecordStore
from controller.session.scheduling import every, make_scheduler

class FullDisk(RecordStore):
    full = False
    def _conn(self):
        conn = super()._conn()
        if self.full:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn

store = FullDisk(sys.argv[1])
heard = []
store.add_failure_listener(heard.append)
sid = store.open_session(profile="hc-200", port="p", identity={}, operator="a", patient=None,
                         prescription={}, planned_s=1.0)
store.full = True
scheduler = make_scheduler()
every(scheduler, 0.05, getattr(store, sys.argv[2]), "records flush")
scheduler.start()
for n in range(8):
    store._samples.pending.append((sid, float(n), '{"blob": "%s"}' % ("x" * 5000), None, None))
    time.sleep(0.05)
scheduler.shutdown(wait=True)
print(len(heard), len(store._samples.pending))
"""


@pytest.mark.parametrize("job", ["flush_quietly", "flush"])
def test_a_scheduled_flush_that_fails_prints_no_traceback(tmp_path: Path, job: str) -> None:
    done = subprocess.run([sys.executable, "-c", SCHEDULED, str(tmp_path / "r.sqlite3"), job],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    failures, kept = (int(x) for x in done.stdout.split())
    assert failures >= 1 and kept == 8  # it failed, was heard, and nothing was dropped
    if job == "flush_quietly":
        # Nothing printed but, on a loaded machine, the scheduler's own note that a run was
        # skipped because the one before it (a failing fsync) had not finished.
        printed = [line for line in done.stderr.splitlines()
                   if "maximum number of running instances reached" not in line]
        assert printed == [], done.stderr
    else:  # the bare method as a job: APScheduler prints the traceback (why the other exists)
        assert "Traceback" in done.stderr
