"""The console in a real browser: Debian's chromium driven by Playwright, against a real
`modctl serve` with simulated devices (tests/support/service.py).

A test module makes one `Console` for all its tests (`open_console` in a module fixture);
each test takes a fresh logged-in page from it (`console.page("alice")`), which logs in
through the login form as a person would. Controls are found by role and accessible name,
as a screen reader finds them.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.service import PASSWORD, SETTINGS, Client, Room, open_room, wait_for

CHROMIUM = Path("/usr/bin/chromium")
# Playwright's own wait for a control (actions) and for a text (expect): long enough for a
# loaded 2-core CI machine running the suite on two workers, short enough that a broken page
# fails in reasonable time.
TIMEOUT_MS = 20_000
EXPECT_TIMEOUT_MS = 10_000
DESKTOP = {"width": 1280, "height": 800}
TABLET = {"width": 800, "height": 1280}
# axe-core results at these impacts fail a test (moderate and minor ones are reported).
BLOCKING_IMPACTS = ("serious", "critical")


def axe_script() -> Path:
    import axe_playwright_python

    return Path(axe_playwright_python.__file__).parent / "axe.min.js"


@dataclass
class Console:
    room: Room
    browser: Any
    contexts: list[Any] = field(default_factory=list)
    patients: Iterator[int] = field(default_factory=lambda: iter(range(7001, 9999)))

    @property
    def base(self) -> str:
        return self.room.service.base

    def api(self, user: str = "alice") -> Client:
        return self.room.login(user)

    def new_page(self, viewport: dict[str, int] | None = None) -> Any:
        context = self.browser.new_context(viewport=viewport or DESKTOP)
        self.contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.on("console", lambda msg: page.errors.append(msg.text)
                if msg.type == "error" and "Content Security Policy" in msg.text else None)
        return page

    def log_in(self, page: Any, user: str, path: str = "/") -> Any:
        page.goto(self.base + "/login?next=" + quote(path, safe="/"))
        page.get_by_label("User name").fill(user)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(re.compile(re.escape(self.base + path) + r"(\?.*|#.*)?$"))
        return page

    def page(self, user: str = "alice", path: str = "/",
             viewport: dict[str, int] | None = None) -> Any:
        """A new browser context logged in as `user`, showing `path`."""
        page = self.log_in(self.new_page(viewport), user, path)
        if path == "/":
            page.locator(".tile").first.wait_for()
        return page

    @contextlib.contextmanager
    def visit(self, user: str | None = None, path: str = "/",
              viewport: dict[str, int] | None = None) -> Iterator[Any]:
        """A page for one test (logged in as `user`, or not logged in), closed after it: an
        open page keeps its live stream and its rendering going."""
        page = self.page(user, path, viewport) if user else self.new_page(viewport)
        try:
            yield page
        finally:
            self.contexts.remove(page.context)
            page.context.close()

    def close_pages(self) -> None:
        for context in self.contexts:
            with contextlib.suppress(Exception):
                context.close()
        self.contexts.clear()

    # -- the room ---------------------------------------------------------------------------
    def start(self, device: str, duration: str = "120s", patient: str | None = None,
              clear_fault: bool = True) -> dict[str, Any]:
        """Start a session over the API (the console's own start is tested on its page), for
        a new patient each time unless `patient` is given (the clinic's minimum interval
        between two sessions of a patient would refuse the second)."""
        body: dict[str, Any] = {"device": device, "duration": duration,
                                "settings": SETTINGS[device], "clear_fault": clear_fault,
                                "patient": patient or f"P-{next(self.patients)}"}
        return self.api().ok("POST", "/api/sessions", body)

    def quiet(self) -> None:
        """Every output off and every device idle again (a test's own starting point)."""
        client = self.api()
        client.ok("POST", "/api/estop")
        for sim in self.room.sims:
            assert wait_for(lambda s=sim: not self.room.output_on(s), 10)
        assert wait_for(lambda: all(d["state"] in ("idle", "fault") for d in
                                    client.ok("GET", "/api/devices")["devices"]), 10)
        # The alarms that e-stop raised are acknowledged here: a banner arriving on the next
        # page after it loaded moves the page under a click (seen as a lost click under load).
        for alarm in client.ok("GET", "/api/alarms")["alarms"]:
            client.ok("POST", f"/api/alarms/{alarm['id']}/ack")

    def audit(self, action: str) -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(self.room.db)) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(
                "SELECT * FROM audit WHERE action = ? ORDER BY id", (action,))]


@contextlib.contextmanager
def open_console(tmp: Path, *profiles: str, serve_args: tuple[str, ...] = (),
                 **faults: object) -> Iterator[Console]:
    """A room (simulated devices, accounts, `modctl serve`) and a headless chromium."""
    if not CHROMIUM.exists():
        pytest.skip(f"the console's browser tests need Debian's chromium at {CHROMIUM} "
                    "(apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=["--no-sandbox"])
        try:
            with another_room(browser, tmp, *profiles, serve_args=serve_args,
                              **faults) as console:
                yield console
        finally:
            browser.close()


@contextlib.contextmanager
def another_room(browser: Any, tmp: Path, *profiles: str, serve_args: tuple[str, ...] = (),
                 **faults: object) -> Iterator[Console]:
    """One more room for the browser of a console (one Playwright per process)."""
    room = open_room(tmp, *profiles, serve_args=serve_args, **faults)
    console = Console(room, browser)
    try:
        yield console
    finally:
        console.close_pages()
        room.close()


def clock_seconds(text: str) -> int:
    """mm:ss (or h:mm:ss) as the countdown shows it."""
    parts = [int(p) for p in text.strip().split(":")]
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now (serious and critical only)."""
    page.evaluate(axe_script().read_text())     # through DevTools: the page's CSP allows it
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in result["violations"] if v["impact"] in BLOCKING_IMPACTS]


def held_request(page: Any, held: list[Any], timeout_s: float = 5.0) -> Any:
    """The request a `page.route` handler appended to `held` (the page's events reach the
    handler only while Playwright is called, hence the short waits on the page)."""
    deadline = time.monotonic() + timeout_s
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(20)
    assert held, "the request never left the page"
    return held[0]


def settle(seconds: float) -> None:
    """Let real time pass (a countdown, the simulated physics)."""
    time.sleep(seconds)
