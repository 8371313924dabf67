"""A PostgreSQL outage mid-session: the treatment goes on, its records are spooled to a local
fsynced file and replayed in order when the server is back, nothing lost, nothing duplicated,
and new sessions are refused meanwhile (issue 14 §3). A private server is really stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.records import spool as spool_module
from controller.records.spool import SpoolActive
from controller.records.store import RecordStore
from tests.conftest import SimFactory
from tests.session_helpers import history
from tests.support.pg_server import PrivatePostgres
from tests.support.tcp_proxy import FreezingProxy

# The spool retries every RETRY_S; a replay must be done within a few of them.
REPLAY_WAIT_S = 10.0
SESSION_S = 4.0
# A session write while the network is quiet: a local fsync, never a network wait (the ES-4's
# watchdog is 1 s; its poll loop must never stall near that).
QUIET_NETWORK_WRITE_S = 0.2


@pytest.fixture
def server() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.close()


@pytest.fixture(autouse=True)
def quick_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "RETRY_S", 0.2)


def open_one(store: RecordStore, patient: str = "P-001") -> str:
    return store.open_session(profile="hc-200", port="/dev/pts/9", identity={},
                              operator="alice", patient=patient, planned_s=600.0,
                              prescription={"temperature_c": 40.0})


def wait_for(condition: Callable[[], bool], why: str) -> None:
    deadline = time.monotonic() + REPLAY_WAIT_S
    while not condition():
        assert time.monotonic() < deadline, why
        time.sleep(0.02)


def wait_replayed(store: RecordStore) -> None:
    deadline = time.monotonic() + REPLAY_WAIT_S
    while store.spooled() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.spooled() == 0, "the spool was not replayed"


def test_an_outage_mid_session_is_spooled_and_replayed_once(
        server: PrivatePostgres, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    with RecordStore(server.url, spool_dir=spool_dir) as store:
        sid = open_one(store)
        store.set_session_identity(sid, {"model": "HC-200", "serial": "A1"})
        store.add_event(sid, "state", {"state": "running"}, t_s=0.1)
        for i in range(5):
            store.add_sample(sid, {"elapsed_s": i * 0.1, "temperature_c": 40.0}, t_s=i * 0.1)
        server.stop()
        # The session's writes go on without an error, to the spool, durable on return.
        for i in range(5, 12):
            store.add_sample(sid, {"elapsed_s": i * 0.1, "temperature_c": 40.0}, t_s=i * 0.1)
        store.add_event(sid, "decision", {"why": "planned end"}, t_s=1.2)
        store.flush()
        store.close_session(sid, "completed", "planned end", "controller", 1.2,
                            {"cem43_min": 0.5})
        spool = store._writes.spool
        assert spool is not None
        wait_for(lambda: spool.active, "the writer never found the server gone")
        assert store.spooled() >= 3
        lines = [json.loads(x) for x in spool.path.read_text().splitlines()]
        assert [e["op"] for e in lines][-1] == "close"  # durable before the call returned
        # New sessions wait for the database.
        with pytest.raises(SpoolActive, match="new sessions wait"):
            open_one(store, "P-002")
        server.start()
        wait_replayed(store)
        row = store.get_session(sid)
        assert row is not None and row.status == "closed" and row.outcome == "completed"
        assert [e.kind for e in row.events] == ["state", "decision"]  # once each, in order
        samples = store.get_samples(sid)
        assert [s.t_s for s in samples] == pytest.approx([i * 0.1 for i in range(12)])
        result = store.verify_audit()
        assert result.ok, result.reason
        assert spool.replayed[-1]["verified"] is True
        # New sessions start again.
        assert open_one(store, "P-003")
    assert not spool.path.exists()  # all written: the journal is removed at close


def test_a_spool_left_by_a_process_that_died_is_replayed_by_the_next_store(
        server: PrivatePostgres, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    first = RecordStore(server.url, spool_dir=spool_dir)
    sid = open_one(first)
    server.stop()
    first.add_event(sid, "state", {"state": "running"}, t_s=0.5)
    first.close_session(sid, "completed", "planned end", "controller", 1.0, None)
    # The process dies: its spool stays on disk (its flock goes with the process).
    assert first._writes.spool is not None
    first._writes.spool.close()
    server.start()
    with RecordStore(server.url, spool_dir=spool_dir) as second:
        row = second.get_session(sid)
        assert row is not None and row.status == "closed"
        assert [e.kind for e in row.events] == ["state"]
        assert second.verify_audit().ok
    assert list(spool_dir.rglob("*.jsonl")) == []


@pytest.mark.parametrize("back", ["during", "after"])
def test_a_real_session_runs_to_its_end_through_an_outage(
        back: str, server: PrivatePostgres, tmp_path: Path, sim_device: SimFactory) -> None:
    device = sim_device("hc-200")
    env = {**os.environ, "MODCTL_SPOOL": str(tmp_path / "spool")}
    argv = [sys.executable, "-m", "controller.cli.main", "session", "run", "hc-200",
            "--port", device.port, "--duration", f"{SESSION_S:g}", "--json",
            "--set", "temperature_c=40", "--db", server.url, "--patient", "P-0042"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        deadline = time.monotonic() + 10
        while not any(c.on for c in history(device)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the output never started"
            time.sleep(0.02)
        time.sleep(0.5)
        server.stop()  # mid-session
        if back == "during":
            time.sleep(1.0)
            server.start()
        out, err = proc.communicate(timeout=SESSION_S + 20)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = json.loads(out.strip().splitlines()[-1])
    assert (proc.returncode, report["outcome"]) == (0, "completed"), err
    assert [c.on for c in history(device)] == [True, False]  # stopped once, by the controller
    if back == "after":
        assert list((tmp_path / "spool").rglob("*.jsonl")), "nothing was kept in the spool"
        server.start()
    with RecordStore(server.url, spool_dir=tmp_path / "spool") as store:
        row = store.get_session(report["session_id"])
        assert row is not None and (row.status, row.outcome) == ("closed", "completed")
        # Every event of the session's own timeline, once each, in order.
        assert [(e.kind, e.detail) for e in row.events] == \
            [(e["kind"], e["detail"]) for e in report["events"]]
        assert store.get_samples(row.id), "no telemetry"
        assert store.verify_audit().ok
    assert list((tmp_path / "spool").rglob("*.jsonl")) == []


def test_after_a_restart_the_store_holds_its_owner_lock_again(
        server: PrivatePostgres, tmp_path: Path) -> None:
    """A restart between two writes: the writer finds its connection gone before it sends
    anything and makes a new one. The restart also took the owner lock's connection: the lock
    is taken again, so another room starting up does not mark this live session
    interrupted."""
    with RecordStore(server.url, spool_dir=tmp_path / "a") as store:
        sid = open_one(store)
        server.stop()
        server.start()
        store.add_event(sid, "state", {"state": "running"}, t_s=0.5)
        wait_replayed(store)
        with RecordStore(server.url, spool_dir=tmp_path / "b") as other:
            assert other.mark_interrupted_sessions() == []
        store.close_session(sid, "completed", "end", "controller", 1.0, None)
        assert store.verify_audit().ok


def test_a_session_never_waits_on_a_network_gone_quiet(
        server: PrivatePostgres, tmp_path: Path) -> None:
    """The network to the server goes quiet (nothing refused, nothing answered: a query
    would hang until TCP gives up). The session's writes still return at local-disk speed:
    far inside the ES-4's 1 s watchdog, which a blocked poll loop would let run out."""
    proxy = FreezingProxy(("127.0.0.1", server.port))
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
    try:
        with RecordStore(url, spool_dir=tmp_path / "spool") as store:
            sid = open_one(store)
            proxy.frozen.set()
            slowest = 0.0
            for i in range(20):
                began = time.monotonic()
                store.add_event(sid, "state", {"i": i}, t_s=i * 0.05)
                store.add_sample(sid, {"elapsed_s": i * 0.05}, t_s=i * 0.05)
                slowest = max(slowest, time.monotonic() - began)
            store.close_session(sid, "completed", "end", "controller", 1.0, None)
            assert slowest < QUIET_NETWORK_WRITE_S, f"a write waited {slowest:.3f} s"
            proxy.frozen.clear()
            wait_replayed(store)
            row = store.get_session(sid)
            assert row is not None and row.status == "closed" and len(row.events) == 20
            assert store.verify_audit().ok
    finally:
        proxy.close()


def test_a_server_that_refuses_writes_keeps_them_waiting_and_never_faults_the_session(
        server: PrivatePostgres, tmp_path: Path) -> None:
    """Read-only (as after a failover to a standby): the journal's writes are refused without
    a disconnect. Nothing is dropped, no running session is told of a records failure, and
    everything is written once the server takes writes again."""
    import psycopg
    heard: list[str] = []
    with RecordStore(server.url, spool_dir=tmp_path / "spool") as store:
        store.add_failure_listener(lambda e: heard.append(str(e)))
        sid = open_one(store)
        with psycopg.connect(server.url, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            admin.execute("SELECT pg_reload_conf()")
            try:
                for i in range(3):
                    store.add_event(sid, "state", {"i": i}, t_s=0.1 * i)
                spool = store._writes.spool
                assert spool is not None
                wait_for(lambda: spool.active, "the refused writes never counted as an outage")
                assert store.spooled() >= 1 and heard == []
            finally:
                admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
                admin.execute("SELECT pg_reload_conf()")
        wait_replayed(store)
        row = store.get_session(sid)
        assert row is not None and [e.detail["i"] for e in row.events] == [0, 1, 2]
        assert heard == [] and store.verify_audit().ok


def test_a_journal_is_only_written_into_its_own_database(tmp_path: Path, pg_url: str) -> None:
    """Journals are kept per database (its identity), so a store never replays another
    database's journal into its own."""
    server2 = PrivatePostgres()
    server2.start()
    try:
        with RecordStore(pg_url, spool_dir=tmp_path) as a, \
                RecordStore(server2.url, spool_dir=tmp_path) as b:
            assert a._writes.spool is not None and b._writes.spool is not None
            folder_a, folder_b = a._writes.spool.directory, b._writes.spool.directory
        assert folder_a != folder_b and folder_a.parent == folder_b.parent == tmp_path
        folder_a.mkdir(parents=True, exist_ok=True)
        orphan = folder_a / "dead-process.jsonl"
        orphan.write_text(json.dumps({"id": "x1", "op": "audit", "at": "2031-01-01",
                                      "args": {"actor": "a", "action": "note", "subject": "s",
                                               "detail": {}}}) + "\n")
        with RecordStore(server2.url, spool_dir=tmp_path):
            pass
        assert orphan.exists()                     # not database B's to write
        with RecordStore(pg_url, spool_dir=tmp_path) as a:
            assert not orphan.exists()             # database A's store takes it over
            assert a.verify_audit().ok
    finally:
        server2.close()
