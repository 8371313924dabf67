"""Starting treatments from the console, in a real browser against a real `modctl serve
--plans DIR`: by hand (an out-of-limit value is refused beside its field and nothing starts
at the device), from today's booking, from a plan; the room then shows the countdown
going down and the telemetry changing, and a Stop shows "stopping…" until the service
confirms the output off."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from playwright.sync_api import expect

from controller.records.store import RecordStore
from tests.support.browser import Console, clock_seconds, held_request, open_console, settle
from tests.support.service import wait_for

pytestmark = pytest.mark.slow

PLAN = """\
plan_format: 1
name: quick
devices:
  heat: {profile: hc-200}
  ultrasound: {profile: us-300}
steps:
  - name: warm
    device: heat
    duration: 1s
    set: {temperature_c: 39}
    pause_after: 1s
  - name: sound
    device: ultrasound
    duration: 1s
    set: {intensity_w_cm2: 1.0}
"""


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console-start")
    (tmp / "plans").mkdir()
    (tmp / "plans" / "quick.yaml").write_text(PLAN)
    with open_console(tmp, "hc-200", "us-300",
                      serve_args=("--plans", str(tmp / "plans"))) as console:
        yield console


@pytest.fixture(scope="module")
def alice(console: Console) -> Any:
    return console.page("alice", "/start")


@pytest.fixture
def page(console: Console, alice: Any) -> Any:
    console.quiet()
    return alice


def ready(page: Any) -> None:
    """The start page has loaded its devices, bookings and plans (start.js sets it last)."""
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def fill_by_hand(page: Any, base: str, temperature: str, patient: str) -> None:
    page.goto(base + "/start#hand")
    ready(page)
    form = page.get_by_role("region", name="By hand")
    form.get_by_role("combobox", name="Device").select_option("heat-1")
    expect(form.get_by_text("allowed 5 – 45 °C · step 0.1 · default 40 °C")).to_be_visible()
    form.get_by_role("textbox", name="Pad temperature (°C)").fill(temperature)
    form.get_by_role("textbox", name="Duration").fill("60s")
    form.get_by_role("textbox", name="Patient id").fill(patient)
    form.get_by_role("button", name="Review and start…").click()
    expect(page.get_by_role("region", name=re.compile("Confirm with the patient"))) \
        .to_contain_text(f"Patient {patient}")
    page.get_by_role("button", name=f"Confirm patient {patient} and start").click()


def test_an_out_of_limit_value_is_shown_beside_its_field_and_nothing_starts(
        console: Console, page: Any) -> None:
    fill_by_hand(page, console.base, "60", "P-0041")
    form = page.get_by_role("region", name="By hand")
    field = form.get_by_role("textbox", name="Pad temperature (°C)")
    expect(field).to_have_accessible_description(
        re.compile(r"Pad temperature 60 is above the clinical limit 45 °C"))
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(form.get_by_role("textbox", name="Duration")).not_to_have_attribute("aria-invalid",
                                                                            "true")
    assert page.url.endswith("/start#hand")
    assert not console.room.output_on("heat-1")
    assert console.api().ok("GET", "/api/sessions?patient=P-0041")["sessions"] == []
    # A bad duration and a patient's name are refused beside their own fields as well.
    field.fill("40")
    form.get_by_role("textbox", name="Duration").fill("ten minutes")
    form.get_by_role("textbox", name="Patient id").fill("John Smith")
    form.get_by_role("button", name="Review and start…").click()
    page.get_by_role("button", name="Confirm patient John Smith and start").click()
    expect(form.get_by_role("textbox", name="Duration")).to_have_accessible_description(
        re.compile("is not understood"))
    expect(form.get_by_role("textbox", name="Patient id")).to_have_accessible_description(
        re.compile("not a pseudonymous patient id"))
    assert not console.room.output_on("heat-1")


def test_by_hand_the_room_counts_down_and_a_stop_waits_for_the_service(
        console: Console, page: Any) -> None:
    fill_by_hand(page, console.base, "40", "P-0042")
    page.wait_for_url(console.base + "/")
    assert console.room.output_on("heat-1")
    tile = page.get_by_role("article", name="heat-1")
    expect(tile).to_contain_text("Delivering")
    expect(tile).to_contain_text("Patient P-0042")
    expect(tile).to_contain_text("40 °C")
    expect(tile).to_contain_text("left of 01:00")
    timer = tile.get_by_role("timer")
    pad = tile.locator("dt:text-is('Pad temperature') + dd")
    first, first_pad = clock_seconds(timer.inner_text()), pad.inner_text()
    assert first_pad.endswith("°C")
    settle(1.3)
    assert clock_seconds(timer.inner_text()) <= first - 1
    expect(pad).not_to_have_text(first_pad)          # the pad warms towards 40 °C

    # The stop request is held on its way: the tile says "stopping…", never "stopped",
    # and the device's output is still on.
    held: list[Any] = []
    page.route("**/api/sessions/*/stop", lambda route: held.append(route))
    tile.get_by_role("button", name="Stop heat-1").click()
    expect(tile.get_by_role("button", name="Stopping heat-1")).to_have_text("stopping…")
    expect(tile.get_by_role("button", name="Stopping heat-1")).to_be_disabled()
    request = held_request(page, held)
    assert console.room.output_on("heat-1")
    expect(tile).not_to_contain_text("Last:")
    request.continue_()
    expect(tile).to_contain_text("Last: Stopped — output confirmed off")
    assert not console.room.output_on("heat-1")
    expect(tile).to_contain_text("Ready")
    page.unroute("**/api/sessions/*/stop")


def test_from_a_booking_with_one_click_and_the_patient_confirmed(
        console: Console, page: Any) -> None:
    with RecordStore(console.room.db, create=False) as store:
        booking = store.add_booking(
            devices={"device": "us-1"}, profile="us-300", plan=None,
            settings={"intensity_w_cm2": "1.5", "duty_pct": "20"}, modalities=["ultrasound"],
            patient="P-0200", starts_at=datetime.now(UTC), duration_s=60.0,
            actor="frontdesk", min_interval_s=0)
    page.goto(console.base + "/start")
    ready(page)
    row = page.get_by_role("row").filter(has_text="P-0200")
    expect(row).to_contain_text("Ultrasound · 1.5 W/cm² · 20 %")
    row.get_by_role("button", name=f"Start booking {booking.id} for P-0200").click()
    assert not console.room.output_on("us-1")              # not before the confirmation
    page.get_by_role("button", name="Confirm patient P-0200 and start").click()
    page.wait_for_url(console.base + "/")
    tile = page.get_by_role("article", name="us-1")
    expect(tile).to_contain_text("Patient P-0200")
    expect(tile).to_contain_text("Delivering")
    expect(tile.locator("dt:text-is('Measured power') + dd")).to_have_text(re.compile(r" W$"))
    assert console.room.output_on("us-1")


def test_from_a_plan_with_a_device_per_role(console: Console, page: Any) -> None:
    page.goto(console.base + "/start#plan")
    ready(page)
    form = page.get_by_role("region", name="From a plan")
    form.get_by_role("combobox", name="Plan").select_option("quick")
    expect(form.get_by_role("combobox", name="Device for heat (HC-200)")).to_have_value("heat-1")
    expect(form.get_by_role("combobox", name="Device for ultrasound (US-300)")) \
        .to_have_value("us-1")
    expect(form.get_by_text("warm on the heat device: 39 °C for 00:01, then a pause of 00:01")) \
        .to_be_visible()
    form.get_by_role("textbox", name="Patient id").fill("P-0300")
    form.get_by_role("button", name="Review and start the plan…").click()
    page.get_by_role("button", name="Confirm patient P-0300 and start").click()
    page.wait_for_url(console.base + "/")
    panel = page.get_by_role("region", name="Plan quick · patient P-0300")
    expect(panel).to_contain_text("warm on heat-1")
    assert wait_for(lambda: console.room.output_on("heat-1"), 5, period=0.005)
    plan_id = page.evaluate("JSON.parse(localStorage.getItem('modctl.plans'))[0].id")
    client = console.api()
    assert wait_for(lambda: client.ok("GET", f"/api/plans/runs/{plan_id}")["final"], 15)
    report = client.ok("GET", f"/api/plans/runs/{plan_id}")["report"]
    assert report["outcome"] == "completed", report
    expect(panel).to_contain_text("Ended: completed")
    sessions = console.api().ok("GET", "/api/sessions?patient=P-0300")["sessions"]
    assert sorted(s["profile"] for s in sessions) == ["hc-200", "us-300"]
    assert all(s["operator"] == "alice" for s in sessions)
