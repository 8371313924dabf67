"""A patient's history in the console (a real browser, a real `modctl serve`): the
sessions with their doses, a chart drawn in the page, and each session's printable report."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support.browser import Console, open_console
from tests.support.service import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with open_console(tmp_path_factory.mktemp("console-history"), "hc-200") as console:
        got = console.start("heat-1", duration="1s", patient="P-0900")
        client = console.api()
        assert wait_for(lambda: client.ok("GET", f"/api/sessions/{got['id']}")["final"], 10)
        yield console


def test_the_history_lists_sessions_with_a_chart_and_reports(console: Console) -> None:
    with console.visit("bob", "/patients") as page:
        history_of_p0900(console, page)


def history_of_p0900(console: Console, page: Any) -> None:
    page.get_by_role("textbox", name="Patient id").fill("P-0900")
    page.get_by_role("button", name="Show history").click()
    page.wait_for_url(console.base + "/patients/P-0900")
    expect(page.get_by_role("heading", name="Patient history: P-0900")).to_be_visible()
    table = page.get_by_role("table", name="Sessions of P-0900, newest first")
    row = table.get_by_role("row").nth(1)
    expect(row).to_contain_text("Heat / cold")
    expect(row).to_contain_text("completed")
    expect(row).to_contain_text("Thermal dose")
    chart = page.get_by_role("img", name="Minutes delivered per session")
    expect(chart.locator("circle")).to_have_count(1)          # one thermal session
    link = row.get_by_role("link", name=re.compile("^Printable report"))
    href = link.get_attribute("href")
    assert href is not None and href.startswith("/api/sessions/") and href.endswith("/report")
    report = page.request.get(console.base + href)
    assert report.status == 200 and "P-0900" in report.text()
    assert page.errors == []


def test_a_name_is_refused_as_a_patient_id(console: Console) -> None:
    with console.visit("bob", "/patients/John%20Smith") as page:
        expect(page.get_by_text("is not a pseudonymous patient id")).to_be_visible()
        expect(page.get_by_role("table")).to_have_count(0)
