"""E-STOP ALL in a real browser against a real `modctl serve` with three simulated devices:
with three sessions running, one click (or F9 from anywhere, or Tab to it and Enter) turns
every output off, and the page says "stopping…" until the service reports them off."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support.browser import Console, held_request, open_console
from tests.support.service import wait_for

pytestmark = pytest.mark.slow

DEVICES = ("heat-1", "us-1", "tens-1")
ESTOP = re.compile("E-STOP ALL")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with open_console(tmp_path_factory.mktemp("console-estop")) as console:
        yield console


@pytest.fixture(scope="module")
def alice(console: Console) -> Any:
    return console.page("alice")


@pytest.fixture
def three_running(console: Console, alice: Any) -> Any:
    """alice's room view with a session running on each of the three devices."""
    console.quiet()
    alice.goto(console.base + "/")
    for device in DEVICES:
        console.start(device)
    assert wait_for(lambda: all(console.room.output_on(d) for d in DEVICES), 10), \
        console.api().ok("GET", "/api/devices")
    for device in DEVICES:
        expect(alice.get_by_role("article", name=device)).to_contain_text("Delivering")
    return alice


def all_off(console: Console) -> bool:
    return not any(console.room.output_on(d) for d in DEVICES)


def test_one_click_stops_every_output_and_says_so_only_once_confirmed(
        console: Console, three_running: Any) -> None:
    page = three_running
    status = page.get_by_role("status").filter(has_text=re.compile("stopping|output"))
    held: list[Any] = []
    page.route("**/api/estop", lambda route: held.append(route))
    page.get_by_role("button", name=ESTOP).click()
    expect(page.locator("#estop-status")).to_have_text("stopping…")
    request = held_request(page, held)
    assert not all_off(console)          # held on its way: the page claims nothing yet
    request.continue_()
    page.unroute("**/api/estop")
    expect(status).to_have_text(re.compile(r"^Every output off \(confirmed "))
    assert all_off(console)
    for device in DEVICES:
        expect(page.get_by_role("article", name=device)).to_contain_text(
            "Last: Stopped — output confirmed off")
    audit = console.audit("service.estop_all")
    assert audit and audit[-1]["actor"] == "alice"


def test_f9_stops_everything_even_from_inside_a_text_field(
        console: Console, three_running: Any) -> None:
    page = three_running
    page.get_by_role("link", name="Patient history").click()
    field = page.get_by_role("textbox", name="Patient id")
    field.fill("P-12")
    field.press("F9")
    assert wait_for(lambda: all_off(console), 5)
    expect(page.locator("#estop-status")).to_have_text(re.compile("^Every output off"))
    expect(field).to_have_value("P-12")                 # F9 typed nothing


def test_tab_to_the_button_and_enter_stops_everything(
        console: Console, three_running: Any) -> None:
    page = three_running
    page.locator("body").focus()
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "estop":
            break
    button = page.get_by_role("button", name=ESTOP)
    expect(button).to_be_focused()
    expect(button).to_have_attribute("aria-keyshortcuts", "F9")
    expect(button).to_contain_text("F9")
    page.keyboard.press("Enter")
    assert wait_for(lambda: all_off(console), 5)
    expect(page.locator("#estop-status")).to_have_text(re.compile("^Every output off"))


def test_the_button_is_in_the_same_place_on_every_page(console: Console, alice: Any) -> None:
    boxes = []
    for path in ("/", "/start", "/patients", "/patients/P-0001"):
        alice.goto(console.base + path)
        button = alice.get_by_role("button", name=ESTOP)
        expect(button).to_be_visible()
        boxes.append(button.bounding_box())
    assert all(box == boxes[0] for box in boxes), boxes
    assert boxes[0]["x"] + boxes[0]["width"] > 1200 and boxes[0]["y"] < 40
