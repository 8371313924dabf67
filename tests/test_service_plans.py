"""Plans and bookings over the clinic service's API (a real `modctl serve --plans DIR`,
simulated devices on ptys): a plan runs its steps on reserved devices, stops on request,
and a booking starts its session with the checks of `modctl book start`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from controller.records.store import RecordStore
from tests.support.service import Client, Room, open_room, wait_for

pytestmark = pytest.mark.slow

PLAN = """\
plan_format: 1
name: {name}
devices:
  heat: {{profile: hc-200}}
  ultrasound: {{profile: us-300}}
steps:
  - name: heat
    device: heat
    duration: {first}
    set: {{temperature_c: 39}}
    pause_after: 1s
  - name: ultrasound
    device: ultrasound
    duration: 1s
    set: {{intensity_w_cm2: 1.0}}
"""


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    tmp = tmp_path_factory.mktemp("room")
    plans = tmp / "plans"
    plans.mkdir()
    (plans / "quick.yaml").write_text(PLAN.format(name="quick", first="1s"))
    (plans / "long.yaml").write_text(PLAN.format(name="long", first="60s"))
    (plans / "paused.yaml").write_text(PLAN.format(name="paused", first="1s")
                                       .replace("pause_after: 1s", "pause_after: 60s"))
    room = open_room(tmp, "hc-200", "us-300", serve_args=("--plans", str(plans)))
    yield room
    room.close()


@pytest.fixture
def alice(room: Room) -> Client:
    return room.login("alice")


def final(client: Client, plan_id: str, timeout: float = 20) -> dict[str, Any]:
    assert wait_for(lambda: client.ok("GET", f"/api/plans/runs/{plan_id}")["final"], timeout)
    return client.ok("GET", f"/api/plans/runs/{plan_id}")


def test_a_plan_runs_its_steps_on_reserved_devices(room: Room, alice: Client) -> None:
    names = {p["name"] for p in alice.ok("GET", "/api/plans")["plans"]}
    assert {"quick", "long", "knee-osteoarthritis"} <= names
    run = alice.ok("POST", "/api/plans/run", {
        "plan": "quick", "devices": {"heat": "heat-1", "ultrasound": "us-1"},
        "patient": "P-0100"})
    assert run["final"] is False and run["operator"] == "alice"
    assert [p["id"] for p in alice.ok("GET", "/api/plans/runs")["plans"]] == [run["id"]]
    assert alice.ok("GET", "/api/devices/us-1")["plan"] == run["id"]
    # The ultrasound device waits for its step: reserved, nobody else may start there.
    assert alice.ok("GET", "/api/devices/us-1")["state"] == "reserved"
    status, got = alice.call("POST", "/api/sessions", {
        "device": "us-1", "duration": "1s", "settings": {"intensity_w_cm2": 1.0}})
    assert status == 409 and "reserved by a running plan" in got["error"]
    report = final(alice, run["id"])["report"]
    assert report["outcome"] == "completed", report
    assert [s["outcome"] for s in report["steps"]] == ["completed", "completed"]
    with RecordStore(room.db, create=False) as store:
        rows = [store.get_session(s["session_id"]) for s in report["steps"]]
    assert all(r is not None and r.operator == "alice" and r.patient == "P-0100"
               for r in rows)
    assert wait_for(lambda: alice.ok("GET", "/api/devices/us-1")["state"] == "idle", 10)


def test_stopping_a_plan_stops_its_step_and_ends_it(room: Room, alice: Client) -> None:
    run = alice.ok("POST", "/api/plans/run", {
        "plan": "long", "devices": {"heat": "heat-1", "ultrasound": "us-1"}})
    assert wait_for(lambda: room.output_on("heat-1"), 10)
    stopped = room.login("tom").ok("POST", f"/api/plans/runs/{run['id']}/stop")
    assert alice.ok("GET", "/api/plans/runs")["plans"] == []
    assert stopped["final"] is True
    assert stopped["report"]["outcome"] == "stopped"
    assert not room.output_on("heat-1") and not room.output_on("us-1")
    assert stopped["report"]["steps"][0]["outcome"] == "aborted"


def test_the_room_estop_ends_a_plan_in_its_pause(room: Room, alice: Client) -> None:
    run = alice.ok("POST", "/api/plans/run", {
        "plan": "paused", "devices": {"heat": "heat-1", "ultrasound": "us-1"}})
    assert wait_for(lambda: "pause of" in "\n".join(
        alice.ok("GET", f"/api/plans/runs/{run['id']}")["progress"]), 10)
    alice.ok("POST", "/api/estop")
    report = final(alice, run["id"], 5)["report"]
    assert report["outcome"] == "stopped" and "emergency stop" in report["reason"]
    assert [s["outcome"] for s in report["steps"]] == ["completed", "not_started"]
    assert not room.output_on("us-1")


def test_plan_requests_that_are_refused(alice: Client, room: Room) -> None:
    devices = {"heat": "heat-1", "ultrasound": "us-1"}
    for plan, needle in (("../etc/passwd", "a plan's name"), ("no-such-plan", "no-such-plan")):
        status, got = alice.call("POST", "/api/plans/run", {"plan": plan, "devices": devices})
        assert status == 422 and needle in got["error"], got
    status, got = alice.call("POST", "/api/plans/run", {
        "plan": "quick", "devices": {"heat": "us-1", "ultrasound": "heat-1"}})
    assert status == 422 and "needs a hc-200" in got["error"]
    status, got = alice.call("POST", "/api/plans/run", {"plan": "quick",
                                                        "devices": {"heat": "heat-1"}})
    assert status == 422 and "ultrasound" in got["error"]
    status, got = room.login("tom").call("POST", "/api/plans/run",
                                         {"plan": "quick", "devices": devices})
    assert status == 403


def test_a_booking_starts_its_session_and_is_marked_done(room: Room, alice: Client) -> None:
    with RecordStore(room.db, create=False) as store:
        booking = store.add_booking(
            devices={"device": "heat-1"}, profile="hc-200", plan=None,
            settings={"temperature_c": "40"}, modalities=["thermal"], patient="P-0200",
            starts_at=datetime.now(UTC), duration_s=1.0, actor="frontdesk",
            min_interval_s=0)
    got = alice.ok("POST", f"/api/bookings/{booking.id}/start")
    assert got["session"]["patient"] == "P-0200"
    assert wait_for(lambda: alice.ok("GET", f"/api/bookings/{booking.id}")["status"] == "done",
                    10)
    status, again = alice.call("POST", f"/api/bookings/{booking.id}/start")
    assert status == 409 and "is done" in again["error"]
    status, _ = alice.call("POST", "/api/bookings/99999/start")
    assert status == 404


