"""Several rooms on one records database: the rooms table (SQLite and PostgreSQL), the clinic
service's room (which devices it holds, its heartbeat, the room it claims), and real
`modctl serve` processes for rooms A, B and C on one PostgreSQL schema: each holds its own
devices, B sees A's running session read-only (API and the console's Rooms page) and cannot
start, stop or e-stop it, a killed room goes stale and a stopped one leaves the list."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.records.room_table import ROOM_STALE_S
from controller.records.store import RecordStore
from controller.service.context import ServiceContext, ServiceOptions
from controller.service.rooms import HEARTBEAT_S, Heartbeat, RoomError
from controller.session.service import ClinicRules
from simulator.server import SimulatedDevice
from tests.support.pg import _admin, schema_url
from tests.support.service import (
    ROOT,
    SETTINGS,
    Client,
    Room,
    Service,
    add_device,
    add_users,
    simulators,
    start_service,
    wait_for,
)

HOST = socket.gethostname()


# -- the rooms table, on both backends -----------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordStore]:
    where = str(tmp_path / "records.sqlite3") if request.param == "sqlite" \
        else request.getfixturevalue("pg_url")
    with RecordStore(where, spool_dir=tmp_path / "spool") as store:
        yield store


def test_a_heartbeat_inserts_then_updates_the_room_s_row(store: RecordStore) -> None:
    doing = [{"device": "heat-1", "state": "delivering",
              "session": {"patient": "P-0042", "remaining_s": 90.0}}]
    store.rooms.heartbeat("Room 1", "pc-1", 4242, "http://pc-1:8470", doing)
    (first,) = store.rooms.rooms()
    assert (first.name, first.host, first.pid, first.url) == ("Room 1", "pc-1", 4242,
                                                               "http://pc-1:8470")
    assert first.activity == doing and not first.stale and 0 <= first.age_s < 5
    assert wait_for(lambda: store.rooms.rooms()[0].age_s > 0.01)
    store.rooms.heartbeat("Room 1", "pc-1", 4242, "http://pc-1:8470", [])
    (again,) = store.rooms.rooms()
    assert again.activity == [] and again.heartbeat_at > first.heartbeat_at
    assert again.started_at == first.started_at          # the same process: same start
    store.rooms.heartbeat("Room 1", "pc-1", 5555, "http://pc-1:8470", [])
    (restarted,) = store.rooms.rooms()
    assert restarted.pid == 5555 and restarted.started_at > first.started_at


def test_a_room_without_heartbeats_goes_stale(store: RecordStore) -> None:
    store.rooms.heartbeat("A", "pc-a", 1, "", [])
    store.rooms.heartbeat("B", "pc-b", 2, "", [])
    assert [(r.name, r.stale) for r in store.rooms.rooms()] == [("A", False), ("B", False)]
    # The threshold is a parameter here so that the test need not wait ROOM_STALE_S.
    assert wait_for(lambda: all(r.stale for r in store.rooms.rooms(stale_s=0.05)), 5)
    store.rooms.heartbeat("B", "pc-b", 2, "", [])
    assert [(r.name, r.stale) for r in store.rooms.rooms(stale_s=0.05)] == [("A", True),
                                                                           ("B", False)]
    assert ROOM_STALE_S >= 3 * HEARTBEAT_S       # a room is not stale before 3 missed beats


def test_leave_deletes_only_the_leaving_process_s_row(store: RecordStore) -> None:
    store.rooms.heartbeat("A", "pc-a", 10, "", [])
    assert store.rooms.leave("A", "pc-a", 9) is False          # an older process of A
    assert store.rooms.leave("A", "pc-other", 10) is False     # the same pid elsewhere
    assert [r.name for r in store.rooms.rooms()] == ["A"]
    assert store.rooms.leave("A", "pc-a", 10) is True
    assert store.rooms.rooms() == []
    assert store.rooms.leave("A", "pc-a", 10) is False


def test_a_claim_is_refused_while_another_live_service_holds_the_room(
        store: RecordStore) -> None:
    assert store.rooms.claim("A", "pc-a", 10, "http://pc-a:1", []) is None
    held = store.rooms.claim("A", "pc-b", 20, "http://pc-b:1", [])
    assert held is not None and (held.host, held.pid) == ("pc-a", 10)
    assert store.rooms.claim("A", "pc-a", 10, "http://pc-a:1", []) is None   # itself again
    assert store.rooms.claim("A", "pc-a", 11, "", [], alive=False) is None   # A crashed
    assert store.rooms.room("A").pid == 11                                   # type: ignore
    assert wait_for(lambda: store.rooms.room("A", stale_s=0.05).stale, 5)    # type: ignore
    assert store.rooms.claim("A", "pc-b", 20, "", [], stale_s=0.05) is None  # A went quiet
    assert store.rooms.room("A").host == "pc-b"                              # type: ignore


# -- the service's room, in this process ---------------------------------------------------

def test_the_room_comes_from_modctl_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODCTL_ROOM", "Room 2")
    assert ServiceOptions(idle_s=60).room == "Room 2"
    assert ServiceOptions(idle_s=60, room="B").room == "B"       # --room wins
    monkeypatch.setenv("MODCTL_ROOM", "")
    assert ServiceOptions(idle_s=60).room is None


def test_a_shared_database_needs_a_room(pg_url: str, tmp_path: Path) -> None:
    with RecordStore(pg_url, spool_dir=tmp_path) as store:
        with pytest.raises(RoomError) as refused:
            ServiceContext.build(store, ClinicRules(), ServiceOptions(idle_s=60, room=None))
        assert "--room NAME" in str(refused.value) and "$MODCTL_ROOM" in str(refused.value)
        assert "password" not in str(refused.value)
        with pytest.raises(RoomError, match="room name ' A': use 1-40 letters"):
            ServiceContext.build(store, ClinicRules(), ServiceOptions(idle_s=60, room=" A"))


def test_a_service_holds_only_its_room_s_devices(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with RecordStore(tmp_path / "r.sqlite3") as store:
        for name, room in (("heat-n", None), ("heat-a", "A"), ("heat-b", "B")):
            store.add_device(name, "hc-200", f"/dev/ttyFAKE-{name}", "test", room=room)
        for room, held in ((None, ["heat-n"]), ("A", ["heat-a"]), ("B", ["heat-b"])):
            ctx = ServiceContext.build(store, ClinicRules(), ServiceOptions(60, room=room))
            assert sorted(ctx.slots) == held
        assert "registered without a room, so not held by room 'B': heat-n" in caplog.text


def test_heartbeat_failures_are_logged_once_and_never_raise(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = RecordStore(tmp_path / "r.sqlite3")
    ctx = ServiceContext.build(store, ClinicRules(), ServiceOptions(60, room="A"))
    ctx.claim_room()
    beat = ctx.heartbeat
    assert beat is not None and beat.beat()
    store.close()                       # the database cannot be written from now on
    caplog.set_level(logging.INFO, logger="controller.service.rooms")
    assert beat.beat() is False and beat.beat() is False and beat.beat() is False
    said = [r for r in caplog.records if r.name == "controller.service.rooms"]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert "heartbeat not written" in said[0].getMessage()


def test_a_room_whose_service_died_on_this_pc_is_claimed_at_once(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with RecordStore(tmp_path / "r.sqlite3") as store:
        store.rooms.heartbeat("A", HOST, dead.pid, "", [])          # fresh, but its pid is gone
        ctx = ServiceContext.build(store, ClinicRules(), ServiceOptions(60, room="A"))
        ctx.claim_room()
        assert store.rooms.room("A").pid == os.getpid()              # type: ignore[union-attr]
        other = Heartbeat(ctx, "A", host="pc-elsewhere", pid=1)
        with pytest.raises(RoomError, match=f"room 'A' is already served by the clinic "
                                            f"service on {re.escape(HOST)} "
                                            f"\\(pid {os.getpid()}"):
            other.claim()


# -- real services for rooms A, B and C on one PostgreSQL schema ---------------------------

@dataclass
class Clinic:
    url: str
    sims: dict[str, SimulatedDevice]
    services: dict[str, Service]
    c_seen_live: bool
    tmp: Path

    def login(self, room: str, user: str = "alice") -> Client:
        return self.services[room].client().login(user)

    def output_on(self, device: str) -> bool:
        model = self.sims[device].model
        with model.lock:
            return bool(model.output_on)

    def rooms_seen_by(self, client: Client) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in client.ok("GET", "/api/rooms")["rooms"]}


def _serve(url: str, room: str, tmp: Path) -> Service:
    return start_service(url, env={"MODCTL_ROOM": room, "MODCTL_SPOOL": str(tmp / room)})


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinic]:
    admin = _admin()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE SCHEMA {schema}")  # type: ignore[attr-defined]
    url = schema_url(schema)
    tmp = tmp_path_factory.mktemp("rooms")
    sims = dict(zip(("heat-a", "heat-b", "heat-new"),
                    simulators("hc-200", "hc-200", "hc-200"), strict=True))
    services: dict[str, Service] = {}
    try:
        with RecordStore(url, spool_dir=tmp / "setup") as store:
            add_users(store, alice="clinician", bob="clinician", tom="technician")
            add_device(store, "heat-a", "hc-200", sims["heat-a"].port, room="A")
            add_device(store, "heat-b", "hc-200", sims["heat-b"].port, room="B")
        for room in "ABC":     # one after the other: each has its whole start time-out
            services[room] = _serve(url, room, tmp)
        # Room C holds nothing and is killed at once: its row must go stale meanwhile.
        bob_b = services["B"].client().login("bob")
        c_seen = wait_for(lambda: "C" in {r["name"] for r in
                                         bob_b.ok("GET", "/api/rooms")["rooms"]}, 10)
        services["C"].proc.kill()
        services["C"].proc.wait(10)
        # Dead, it writes no more: its last heartbeat is moved back past ROOM_STALE_S, as if
        # that much time had passed, instead of the tests waiting it out.
        long_ago = datetime.now(UTC) - timedelta(seconds=ROOM_STALE_S + HEARTBEAT_S)
        admin.execute(f"UPDATE {schema}.rooms SET heartbeat_at = %s WHERE name = 'C'",  # type: ignore[attr-defined]
                      (long_ago.isoformat(timespec="milliseconds"),))
        yield Clinic(url, sims, services, c_seen, tmp)
    finally:
        for service in services.values():
            service.stop()
        for sim in sims.values():
            sim.stop()
        admin.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[attr-defined]
        admin.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def session_a(clinic: Clinic) -> Iterator[dict[str, Any]]:
    """A two-minute session on room A's device, running through the module's tests."""
    alice = clinic.login("A")
    started = alice.ok("POST", "/api/sessions", {
        "device": "heat-a", "duration": "120s", "settings": SETTINGS["heat-1"],
        "patient": "P-3001"})
    yield started
    if clinic.services["A"].proc.poll() is None:    # the last test stops room A itself
        alice.call("POST", f"/api/sessions/{started['id']}/stop")


def test_each_service_holds_its_own_room_s_devices(clinic: Clinic) -> None:
    a, b = clinic.login("A"), clinic.login("B")
    assert [d["name"] for d in a.ok("GET", "/api/devices")["devices"]] == ["heat-a"]
    assert [d["name"] for d in b.ok("GET", "/api/devices")["devices"]] == ["heat-b"]
    status, got = b.call("GET", "/api/devices/heat-a")
    assert status == 404 and "heat-a" in got["error"]
    seen = clinic.rooms_seen_by(b)
    assert seen["B"]["this_room"] and not seen["A"]["this_room"]
    assert [d["device"] for d in seen["A"]["devices"]] == ["heat-a"]
    assert seen["A"]["url"].startswith("http://127.0.0.1:") and seen["A"]["host"] == HOST


def test_room_b_sees_room_a_s_session_with_patient_and_time_left(
        clinic: Clinic, session_a: dict[str, Any]) -> None:
    bob = clinic.login("B", "bob")

    def shown() -> dict[str, Any] | None:
        device = clinic.rooms_seen_by(bob)["A"]["devices"][0]
        return device if device["session"] and device["state"] == "delivering" else None

    # A start is written at once (not at the next 5 s beat); delivering within one beat.
    assert wait_for(lambda: shown() is not None, HEARTBEAT_S + 3)
    device = shown()
    assert device is not None
    session = device["session"]
    assert session["patient"] == "P-3001" and session["operator"] == "alice"
    assert session["id"] == session_a["id"] and session["planned_s"] == 120
    assert 0 < session["remaining_s"] <= 120 and session["started_at"].endswith("+00:00")
    assert "settings" not in session and "telemetry" not in session  # stays in room A
    assert not clinic.rooms_seen_by(bob)["A"]["stale"]


def test_room_b_cannot_start_stop_or_estop_room_a_s_device(
        clinic: Clinic, session_a: dict[str, Any]) -> None:
    bob = clinic.login("B", "bob")
    assert wait_for(lambda: clinic.output_on("heat-a"), 10)
    status, got = bob.call("POST", "/api/sessions", {
        "device": "heat-a", "duration": "10s", "settings": SETTINGS["heat-1"],
        "patient": "P-3002"})
    assert status in (404, 409) and "heat-a" in got["error"], got
    for verb in ("stop", "estop"):
        status, got = bob.call("POST", f"/api/sessions/{session_a['id']}/{verb}")
        assert status in (404, 409), got
    assert bob.ok("POST", "/api/estop")["stopped"] == []     # B's e-stop: B's outputs only
    assert clinic.output_on("heat-a")
    state = clinic.login("A").ok("GET", "/api/devices/heat-a")["state"]
    assert state == "delivering"


def test_the_rooms_page_shows_the_other_room_s_session_read_only(
        clinic: Clinic, session_a: dict[str, Any]) -> None:
    from tests.support.browser import CHROMIUM, Console, axe_violations
    if not CHROMIUM.exists():
        pytest.skip(f"the console's browser tests need Debian's chromium at {CHROMIUM}")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=["--no-sandbox"])
        try:
            console = Console(Room(clinic.tmp, {}, clinic.services["B"]), browser)
            page = console.log_in(console.new_page(), "bob", "/rooms")
            nav = page.get_by_role("navigation", name="Console pages")
            expect(nav.get_by_role("link", name="Rooms")).to_have_attribute(
                "aria-current", "page")
            room_a = page.get_by_role("region", name="A", exact=True)
            row = room_a.get_by_role("row", name=re.compile("^heat-a"))
            expect(row).to_contain_text("Busy — delivering")
            expect(row).to_contain_text("P-3001")
            expect(row).to_contain_text("alice")
            left = row.locator(".remaining")
            expect(left).to_have_text(re.compile(r"^[01]:\d\d$|^0\d:\d\d$"))
            first = left.inner_text()
            expect(left).not_to_have_text(first)          # it counts down between reads
            expect(room_a).to_contain_text(re.compile(r"Last heartbeat \d+ s ago"))
            expect(page.locator("#rooms").get_by_role("button")).to_have_count(0)
            expect(page.locator("#rooms").get_by_role("link")).to_have_count(0)
            # Room C was killed: it is marked in words, not by colour alone.
            room_c = page.get_by_role("region", name="C (not responding)")
            expect(room_c).to_contain_text("Not responding — last heartbeat",
                                           timeout=(ROOM_STALE_S + HEARTBEAT_S + 5) * 1000)
            assert axe_violations(page) == []
            assert page.errors == []
        finally:
            console.close_pages()
            browser.close()


def test_a_device_registered_through_the_api_joins_the_service_s_room(clinic: Clinic) -> None:
    tom = clinic.login("B", "tom")
    tom.ok("POST", "/api/devices", {"name": "heat-new", "profile": "hc-200",
                                    "port": clinic.sims["heat-new"].port})
    with RecordStore(clinic.url, spool_dir=clinic.tmp / "check") as store:
        assert store.device("heat-new").room == "B"                 # type: ignore[union-attr]
    names = [d["name"] for d in tom.ok("GET", "/api/devices")["devices"]]
    assert names == ["heat-b", "heat-new"]


def test_without_a_room_a_service_on_a_shared_database_does_not_start(clinic: Clinic) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MODCTL_ROOM"}
    done = subprocess.run([sys.executable, "-m", "controller.cli.main", "serve", "--port", "0",
                           "--db", clinic.url], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 3, done.stderr
    assert "--room NAME" in done.stderr and "MODCTL_ROOM" in done.stderr
    assert "Traceback" not in done.stderr and "listening" not in done.stdout


def test_a_second_service_for_a_served_room_is_refused(clinic: Clinic) -> None:
    """On another PC (a host name not this one), while room A's service beats."""
    with RecordStore(clinic.url, spool_dir=clinic.tmp / "other-pc") as store:
        ctx = ServiceContext.build(store, ClinicRules(), ServiceOptions(60, room="A"))
        other = Heartbeat(ctx, "A", host="pc-elsewhere", pid=1)
        with pytest.raises(RoomError, match="room 'A' is already served by the clinic "
                                            f"service on {re.escape(HOST)}"):
            other.claim()
        ctx.close()
    assert clinic.rooms_seen_by(clinic.login("B", "bob"))["A"]["host"] == HOST


def test_a_killed_service_goes_stale(clinic: Clinic) -> None:
    assert clinic.c_seen_live                 # room C did beat before it was killed
    bob = clinic.login("B", "bob")
    assert wait_for(lambda: clinic.rooms_seen_by(bob)["C"]["stale"],
                    ROOM_STALE_S + HEARTBEAT_S + 5, 0.5)
    c = clinic.rooms_seen_by(bob)["C"]
    assert c["age_s"] > ROOM_STALE_S and c["devices"] == []


def test_a_room_that_shuts_down_leaves_the_list(clinic: Clinic,
                                                session_a: dict[str, Any]) -> None:
    """Last in the module: room A stops (SIGTERM), its session's output first."""
    assert clinic.services["A"].stop(signal.SIGTERM) == 0
    assert not clinic.output_on("heat-a")
    bob = clinic.login("B", "bob")
    assert "A" not in clinic.rooms_seen_by(bob)
