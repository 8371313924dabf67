"""The console's login, its security headers, the plain-HTTP warning, a login that ends
while a page is open, and a lost connection to the service (a real `modctl serve
--insecure-http` on loopback, Debian's chromium)."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.support.browser import Console, open_console
from tests.support.service import PASSWORD, Client

pytestmark = pytest.mark.slow

PAGES = ("/", "/start", "/patients", "/technician", "/admin")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with open_console(tmp_path_factory.mktemp("console-login"), "hc-200",
                      serve_args=("--insecure-http",)) as console:
        yield console


def test_a_page_without_a_login_goes_to_the_login_form(console: Console) -> None:
    with console.visit() as page:
        for path in PAGES:
            page.goto(console.base + path)
            assert page.url == f"{console.base}/login?next={path}"
            expect(page.get_by_role("button", name="Log in")).to_be_visible()


def test_a_wrong_password_is_refused_on_the_form(console: Console) -> None:
    with console.visit() as page:
        page.goto(console.base + "/login")
        page.get_by_label("User name").fill("alice")
        page.get_by_label("Password").fill("not the password at all")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("alert")).to_have_text("wrong user name or password")
        assert page.url.endswith("/login")
        assert page.context.cookies() == []


def test_logging_in_shows_the_room_and_unlocks_the_alarm_sound(console: Console) -> None:
    with console.visit("alice") as page:
        expect(page.get_by_role("heading", name="Room")).to_be_visible()
        expect(page.get_by_role("heading", name="heat-1")).to_be_visible()
        expect(page.get_by_text("alice · clinician")).to_be_visible()
        # The login click is the user gesture that lets the room's audio start.
        expect(page.get_by_role("button", name=re.compile("Alarm sound is off"))).to_be_hidden()
        assert page.evaluate("window.modctlSound.state") == "running"
        cookies = {c["name"]: c for c in page.context.cookies()}
        token = cookies["modctl_token"]
        assert token["httpOnly"] and token["sameSite"] == "Strict"
        # Opened again without a click, the page cannot start its audio and says so.
        page.reload()
        expect(page.get_by_role("button", name=re.compile("Alarm sound is off"))).to_be_visible()
        page.get_by_role("button", name=re.compile("Alarm sound is off")).click()
        expect(page.get_by_role("button", name=re.compile("Alarm sound is off"))).to_be_hidden()
        assert page.evaluate("window.modctlSound.state") == "running"
        assert page.errors == []


def test_pages_and_static_files_carry_the_security_headers(console: Console) -> None:
    token = console.api().token
    for path in ("/login", "/", "/static/room.js", "/static/console.css"):
        request = urllib.request.Request(console.base + path)
        request.add_header("Cookie", f"modctl_token={token}")
        with urllib.request.urlopen(request) as response:
            headers = response.headers
            body = response.read().decode()
        assert "default-src 'self'" in headers["Content-Security-Policy"], path
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Referrer-Policy"] == "no-referrer", path
        if path.endswith(".js"):
            assert headers["Content-Type"].startswith("text/javascript"), headers
        if not path.startswith("/static"):
            assert headers["Cache-Control"] == "no-store"
            # No inline script or style: the policy would block it, so none is written.
            assert not re.search(r"<script(?![^>]*\bsrc=)", body), path
            assert "style=" not in body and "<style" not in body, path


def test_plain_http_is_warned_about_on_every_page(console: Console) -> None:
    with console.visit() as page:
        page.goto(console.base + "/login")
        expect(page.get_by_text("Not encrypted:")).to_be_visible()
        console.log_in(page, "ada")
        for path in PAGES:
            page.goto(console.base + path)
            expect(page.get_by_text("Not encrypted:")).to_be_visible()
        assert page.errors == []


def test_a_login_that_ends_returns_to_the_form_and_back(console: Console) -> None:
    with console.visit("alice", "/start#hand") as page:
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        token = next(c["value"] for c in page.context.cookies() if c["name"] == "modctl_token")
        Client(console.base, token).ok("POST", "/api/logout")
        # The next request of the page is refused (401): the page goes to the login form.
        page.get_by_role("combobox", name="Device").select_option("heat-1")
        page.wait_for_url(re.compile(r"/login\?expired=1&next="))
        expect(page.get_by_text("Your login has ended")).to_be_visible()
        page.get_by_label("User name").fill("alice")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(re.compile(r"/start#hand$"))
        expect(page.get_by_role("heading", name="Start a treatment")).to_be_visible()


def test_logging_out(console: Console) -> None:
    with console.visit("bob") as page:
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(re.compile(r"/login$"))
        page.goto(console.base + "/")
        assert "/login?next=/" in page.url


def test_a_lost_connection_shows_at_once_full_width(console: Console) -> None:
    """Last in this file: it stops the module's service."""
    with console.visit("alice") as page:
        banner = page.get_by_role("alert").filter(has_text="NOT LIVE")
        expect(banner).to_be_hidden()
        console.room.service.stop()
        expect(banner).to_be_visible(timeout=5000)
        box = banner.bounding_box()
        assert box is not None and box["x"] == 0 and box["width"] == 1280
        expect(page.get_by_role("button", name=re.compile("E-STOP ALL"))).to_be_visible()
