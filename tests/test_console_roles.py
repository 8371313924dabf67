"""Who sees which control in the console (a real browser, a real `modctl serve`): a
technician has no Start and cannot start even by calling the API from the page; a
clinician has no technician or admin page; the technician releases and holds a device;
the admin adds and disables an account. Stops and the e-stop are everyone's."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support.browser import Console, open_console

pytestmark = pytest.mark.slow

START_FROM_PAGE = """async () => {
  const csrf = document.cookie.match(/modctl_csrf=([^;]+)/)[1];
  const r = await fetch("/api/sessions", {method: "POST", headers: {
    "Content-Type": "application/json", "X-CSRF-Token": decodeURIComponent(csrf)},
    body: JSON.stringify({device: "heat-1", duration: "10s",
                          settings: {temperature_c: 40}})});
  return [r.status, (await r.json()).error];
}"""


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with open_console(tmp_path_factory.mktemp("console-roles"), "hc-200") as console:
        yield console


@pytest.fixture(scope="module")
def tom(console: Console) -> Any:
    return console.page("tom")


def test_a_technician_has_no_start_and_cannot_use_it(console: Console, tom: Any) -> None:
    tom.goto(console.base + "/")
    expect(tom.get_by_role("heading", name="heat-1")).to_be_visible()
    expect(tom.get_by_role("link", name=re.compile("Start"))).to_have_count(0)
    expect(tom.get_by_role("button", name=re.compile("E-STOP ALL"))).to_be_visible()
    tom.goto(console.base + "/start")
    expect(tom.get_by_role("alert")).to_have_text(
        "tom is a technician; only a clinician (or an admin) may start treatments.")
    expect(tom.get_by_role("button", name="Review and start…")).to_have_count(0)
    status, error = tom.evaluate(START_FROM_PAGE)
    assert status == 403 and "only a clinician" in error
    assert not console.room.output_on("heat-1")


def test_a_technician_releases_and_holds_a_device(console: Console, tom: Any) -> None:
    tom.goto(console.base + "/technician")
    row = tom.get_by_role("row", name=re.compile("^heat-1"))
    expect(row).to_contain_text("ok · next due")
    row.get_by_role("button", name="Release heat-1").click()
    expect(row).to_contain_text("released")
    assert console.api().ok("GET", "/api/devices/heat-1")["state"] == "released"
    row.get_by_role("button", name="Hold heat-1").click()
    expect(row.get_by_role("button", name="Release heat-1")).to_be_visible()
    assert console.api().ok("GET", "/api/devices/heat-1")["state"] == "idle"


def test_a_clinician_has_no_technician_or_admin_page(console: Console) -> None:
    with console.visit("alice") as page:
        nav = page.get_by_role("navigation", name="Console pages")
        expect(nav.get_by_role("link")).to_have_text(["Room", "Start a treatment",
                                                       "Patient history"])
        for path, doing in (("/technician", "register, release and hold devices"),
                            ("/admin", "manage accounts")):
            page.goto(console.base + path)
            expect(page.get_by_role("alert")).to_have_text(
                f"alice is a clinician; only a {path[1:]} (or an admin) may {doing}.")
            expect(page.get_by_role("table")).to_have_count(0)


def test_an_admin_adds_and_disables_an_account(console: Console) -> None:
    with console.visit("ada", "/admin") as page:
        add_and_disable(console, page)


def add_and_disable(console: Console, page: Any) -> None:
    expect(page.get_by_role("row", name=re.compile("^alice clinician active"))).to_be_visible()
    page.get_by_role("textbox", name="Name").fill("carol")
    page.get_by_role("combobox", name="Role").select_option("clinician")
    page.get_by_label("Password (12 characters or more)").fill("a long enough pass phrase")
    page.get_by_role("button", name="Add the account").click()
    row = page.get_by_role("row", name=re.compile("^carol clinician active"))
    expect(row).to_be_visible()
    row.get_by_role("button", name="Disable carol").click()
    row.get_by_role("button", name="Yes, disable carol").click()
    expect(page.get_by_role("row", name=re.compile("^carol clinician disabled"))).to_be_visible()
    users = {u["name"]: u for u in console.api("ada").ok("GET", "/api/users")["users"]}
    assert users["carol"]["disabled"] is True
