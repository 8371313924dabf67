"""Sessions over the clinic service's API, against a real `modctl serve` process and
simulated devices on ptys: start, live stream, completion with records, stop and e-stop
confirmed at the device, refusals (422/409/404), and one session per device under a race."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.records.store import RecordStore
from tests.support.service import ROOT, SETTINGS, Client, Room, open_room, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    room = open_room(tmp_path_factory.mktemp("room"))
    yield room
    room.close()


@pytest.fixture
def alice(room: Room) -> Client:
    return room.login("alice")


def idle(room: Room, client: Client) -> None:
    """Every device idle again (the previous test's sessions have ended)."""
    def check() -> bool:
        got = client.ok("GET", "/api/devices")["devices"]
        assert isinstance(got, list)
        return all(d["state"] == "idle" for d in got)
    assert wait_for(check, 15)


def start(client: Client, device: str, duration: object = "2s",
          **extra: object) -> tuple[int, dict[str, Any]]:
    body = {"device": device, "duration": duration, "settings": SETTINGS[device], **extra}
    return client.call("POST", "/api/sessions", body)


class Stream:
    """A live-stream client on its own thread, keeping every event."""

    def __init__(self, client: Client) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        req = urllib.request.Request(client.base + "/api/events",
                                     headers={"Authorization": f"Bearer {client.token}"})
        self._resp = urllib.request.urlopen(req, timeout=30)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        kind = ""
        try:
            for raw in self._resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.events.append((kind, json.loads(line[6:])))
        except (OSError, ValueError, AttributeError):  # closed by close()
            return

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in list(self.events) if k == kind]

    def close(self) -> None:
        # Shut the socket first: the reader thread holds the response's buffer lock while
        # it waits for the next line, and a plain close() would wait for it (a keep-alive).
        sock = getattr(getattr(self._resp.fp, "raw", None), "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._resp.close()


def test_three_concurrent_sessions_stream_and_complete_with_records(room: Room,
                                                                    alice: Client) -> None:
    idle(room, alice)
    stream = Stream(alice)
    try:
        ids = {}
        for device in ("heat-1", "us-1", "tens-1"):
            status, got = start(alice, device, "2s", patient="P-0042")
            assert status == 201, got
            assert got["operator"] == "alice" and got["state"] in ("ramping", "delivering")
            ids[device] = str(got["id"])
        assert all(room.output_on(d) for d in ids)
        devices = {d["name"]: d for d in alice.ok("GET", "/api/devices")["devices"]}
        for device, sid in ids.items():
            busy = devices[device]
            assert busy["state"] in ("delivering", "holding") and busy["session"]["id"] == sid
            assert busy["session"]["planned_s"] == 2.0
            assert busy["session"]["remaining_s"] is not None
        assert wait_for(lambda: len([e for e in stream.of("session") if e["final"]]) == 3, 10)
        finals = {e["device"]: e for e in stream.of("session")}
        assert {d: finals[d]["outcome"] for d in ids} == dict.fromkeys(ids, "completed")
        telemetry = stream.of("telemetry")
        assert {e["device"] for e in telemetry} == set(ids)   # at the poll rate, per session
        assert len(telemetry) >= 3 * 5
        assert stream.of("hello") and stream.of("device")
    finally:
        stream.close()
    for device, sid in ids.items():
        report = alice.ok("GET", f"/api/sessions/{sid}")
        assert report["final"] is True and report["outcome"] == "completed"
        assert report["stop_confirmed"] is True and not room.output_on(device)
    listed = alice.ok("GET", "/api/sessions?patient=P-0042")["sessions"]
    assert {s["id"] for s in listed} == set(ids.values())
    with RecordStore(room.db, create=False) as store:
        for sid in ids.values():
            row = store.get_session(sid)
            assert row is not None and row.operator == "alice" and row.outcome == "completed"


def test_stop_and_estop_are_confirmed_at_the_device(room: Room, alice: Client) -> None:
    idle(room, alice)
    bob = room.login("bob")
    tom = room.login("tom")            # any logged-in user may stop anything
    status, heat = start(alice, "heat-1", "30s")
    assert status == 201
    status, us = start(alice, "us-1", "30s")
    assert status == 201
    stopped = bob.ok("POST", f"/api/sessions/{heat['id']}/stop")
    assert stopped["outcome"] == "aborted" and stopped["stop_source"] == "operator"
    assert stopped["stop_confirmed"] is True and not room.output_on("heat-1")
    assert "by bob" in str(stopped["reason"])
    estopped = tom.ok("POST", f"/api/sessions/{us['id']}/estop")
    assert estopped["stop_confirmed"] is True and not room.output_on("us-1")
    assert "emergency" in str(estopped["reason"])
    status, again = bob.call("POST", f"/api/sessions/{heat['id']}/stop")
    assert status == 409 and "already ended" in str(again["error"])
    status, _ = bob.call("POST", "/api/sessions/NOSUCHSESSION/stop")
    assert status == 404


def test_estop_all_stops_every_output_in_one_request(room: Room, alice: Client) -> None:
    idle(room, alice)
    for device in ("heat-1", "us-1", "tens-1"):
        assert start(alice, device, "30s")[0] == 201
    assert all(room.output_on(d) for d in ("heat-1", "us-1", "tens-1"))
    t0 = time.monotonic()
    got = room.login("tom").ok("POST", "/api/estop")
    took = time.monotonic() - t0
    stopped = got["stopped"]
    assert isinstance(stopped, list) and len(stopped) == 3
    assert all(s["stop_confirmed"] is True for s in stopped)
    assert not any(room.output_on(d) for d in ("heat-1", "us-1", "tens-1"))
    assert took < 3.0
    # The TENS e-stop latches on the device: the next start is refused until it is cleared.
    idle_or_fault = alice.ok("GET", "/api/devices/tens-1")
    assert wait_for(lambda: alice.ok("GET", "/api/devices/tens-1")["state"] == "fault", 10), \
        idle_or_fault
    status, refused = start(alice, "tens-1", "2s")
    assert status == 409 and "not ready" in str(refused["error"])
    status, cleared = start(alice, "tens-1", "1s", clear_fault=True)
    assert status == 201, cleared
    assert wait_for(lambda: not room.output_on("tens-1"), 10)


def test_refusals_name_the_problem(room: Room, alice: Client) -> None:
    idle(room, alice)
    status, got = alice.call("POST", "/api/sessions", {
        "device": "heat-1", "duration": "2s", "settings": {"temperature_c": 99, "colour": 1}})
    assert status == 422
    problems = " | ".join(map(str, got["problems"]))
    assert "colour" in problems and "temperature_c" in problems
    status, got = alice.call("POST", "/api/sessions", {
        "device": "heat-1", "duration": "forever", "settings": {"temperature_c": 40}})
    assert status == 422 and "forever" in str(got["error"])
    status, got = alice.call("POST", "/api/sessions", {
        "device": "heat-1", "duration": "2h", "settings": {"temperature_c": 40}})
    assert status == 422 and "duration" in str(got["error"])
    status, got = start(alice, "heat-1", patient="Jane Smith")
    assert status == 422 and "patient" in str(got["error"])
    status, got = alice.call("POST", "/api/sessions", {"device": "nope", "duration": 2})
    assert status == 404 and "heat-1" in str(got["error"])
    status, got = room.login("tom").call("POST", "/api/sessions", {
        "device": "heat-1", "duration": 2, "settings": SETTINGS["heat-1"]})
    assert status == 403 and "clinician" in str(got["error"])
    status, first = start(alice, "heat-1", "3s")
    assert status == 201
    status, busy = start(alice, "heat-1", "3s")
    assert status == 409 and "busy" in str(busy["error"])
    alice.ok("POST", f"/api/sessions/{first['id']}/stop")


def test_two_clients_racing_for_one_device_get_exactly_one_session(room: Room,
                                                                   alice: Client) -> None:
    idle(room, alice)
    bob = room.login("bob")
    results: list[tuple[int, dict[str, Any]]] = []
    barrier = threading.Barrier(4)

    def race(client: Client) -> None:
        barrier.wait()
        results.append(start(client, "us-1", "2s"))

    threads = [threading.Thread(target=race, args=(c,)) for c in (alice, bob, alice, bob)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    statuses = sorted(s for s, _ in results)
    assert statuses == [201, 409, 409, 409], results
    winner = next(got for s, got in results if s == 201)
    alice.ok("POST", f"/api/sessions/{winner['id']}/stop")


def test_a_cli_session_on_a_device_the_service_holds_is_refused(room: Room,
                                                                tmp_path: Path) -> None:
    port = room.sims["heat-1"].port
    proc = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "session", "run", "hc-200", "--port",
         port, "--duration", "2s", "--set", "temperature_c=40", "--db",
         str(tmp_path / "cli.sqlite3")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 3, said
    assert "in use by another controller" in said and "serve" in said
    assert "Traceback" not in said


def test_notes_on_a_session(room: Room, alice: Client) -> None:
    sid = alice.ok("GET", "/api/sessions?limit=1")["sessions"][0]["id"]
    made = alice.ok("POST", f"/api/sessions/{sid}/notes", {
        "body_site": "left knee", "pain_before": 6, "pain_after": 3, "text": "tolerated well"})
    assert made["pain_after"] == 3
    status, got = alice.call("POST", f"/api/sessions/{sid}/notes", {"pain_before": 11})
    assert status == 422 and "pain" in got["error"]
    status, _ = room.login("tom").call("POST", f"/api/sessions/{sid}/notes", {"text": "x"})
    assert status == 403
    assert [n["body_site"] for n in alice.ok("GET", f"/api/sessions/{sid}/notes")["notes"]] \
        == ["left knee"]
