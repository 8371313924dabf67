"""The console's accessibility and layout in a real browser: axe-core (shipped as a static
file by axe-playwright-python) finds no serious or critical violation on the login page,
the room (idle, busy, with an alarm) and the start form (with the service's refusals
shown); the room fits a 1280x800 clinic PC and a tablet in portrait."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support.browser import DESKTOP, TABLET, Console, axe_violations, open_console

pytestmark = pytest.mark.slow

DEVICES = ("heat-1", "us-1", "tens-1")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with open_console(tmp_path_factory.mktemp("console-a11y")) as console:
        yield console


@pytest.fixture(scope="module")
def alice(console: Console) -> Any:
    return console.page("alice")


def busy(console: Console, page: Any) -> None:
    console.quiet()
    page.goto(console.base + "/")
    for device in DEVICES:
        console.start(device)
    for device in DEVICES:
        expect(page.get_by_role("article", name=device)).to_contain_text("Delivering")


def test_the_login_page(console: Console) -> None:
    with console.visit() as page:
        page.goto(console.base + "/login")
        assert axe_violations(page) == []


def test_the_room_idle_busy_and_with_an_alarm(console: Console, alice: Any) -> None:
    console.quiet()
    alice.goto(console.base + "/")
    expect(alice.get_by_role("article", name="heat-1")).to_contain_text("Ready")
    assert axe_violations(alice) == []
    busy(console, alice)
    assert axe_violations(alice) == []
    alice.get_by_role("button", name="E-STOP ALL F9").click()     # latches the ES-4's e-stop
    expect(alice.get_by_role("group", name="MEDIUM PRIORITY alarm")).to_be_visible()
    assert axe_violations(alice) == []


def test_the_start_form_with_refusals_beside_the_fields(console: Console, alice: Any) -> None:
    alice.goto(console.base + "/start?device=us-1#hand")
    form = alice.get_by_role("region", name="By hand")
    expect(form.get_by_role("textbox", name="Intensity (W/cm²)")).to_be_visible()
    assert axe_violations(alice) == []
    form.get_by_role("textbox", name="Intensity (W/cm²)").fill("9")
    form.get_by_role("textbox", name="Duration").fill("1h")
    form.get_by_role("button", name="Review and start…").click()
    alice.get_by_role("button", name="Start without a patient id").click()
    expect(form.get_by_role("textbox", name="Intensity (W/cm²)")) \
        .to_have_attribute("aria-invalid", "true")
    assert axe_violations(alice) == []


def test_the_room_fits_a_clinic_pc_and_a_tablet_in_portrait(console: Console,
                                                            alice: Any) -> None:
    busy(console, alice)
    # 1280x800: the three tiles side by side, each countdown in view with E-STOP ALL.
    tiles = [alice.get_by_role("article", name=d).bounding_box() for d in DEVICES]
    assert len({round(b["y"]) for b in tiles}) == 1, tiles
    boxes = [alice.get_by_role("article", name=d).get_by_role("timer").bounding_box()
             for d in DEVICES]
    assert all(b["y"] + b["height"] <= 800 and b["height"] >= 70 for b in boxes), boxes
    for viewport in (DESKTOP, TABLET):
        alice.set_viewport_size(viewport)
        width = viewport["width"]
        assert alice.evaluate("document.documentElement.scrollWidth") <= width
        estop = alice.get_by_role("button", name="E-STOP ALL F9").bounding_box()
        assert estop["x"] + estop["width"] <= width and estop["y"] < 100, estop
    columns = {round(alice.get_by_role("article", name=d).bounding_box()["x"])
               for d in DEVICES}
    assert len(columns) == 2, columns                  # two tiles a row in portrait
    alice.mouse.wheel(0, 2000)                         # E-STOP ALL stays in view
    expect(alice.get_by_role("button", name="E-STOP ALL F9")).to_be_in_viewport()
    alice.set_viewport_size(DESKTOP)
    console.quiet()
