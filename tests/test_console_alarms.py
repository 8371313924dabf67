"""An alarm in a real browser: a simulated HC-200 whose pad comes off (fault injection)
during a session; the service raises a high-priority alarm, and every page shows the
banner (marker, words, red flashing at about 2 Hz) and sounds it until a person
acknowledges it, which the service audits with who."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support.browser import Console, open_console

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    # The pad comes off 0.5 s into the output (simulator/faults.py): the device stops
    # its output and latches the fault.
    with open_console(tmp_path_factory.mktemp("console-alarms"), "hc-200",
                      pad_off_at=0.5) as console:
        yield console


@pytest.fixture(scope="module")
def tripped(console: Console) -> Any:
    """alice's room view (logged in by the form: that click unlocks the audio) once the
    device has faulted."""
    page = console.page("alice")
    console.start("heat-1", patient="P-0777")
    banner = page.get_by_role("region", name="Alarms")
    expect(banner.get_by_role("group", name="HIGH PRIORITY alarm")).to_be_visible(timeout=15_000)
    return page


def test_an_injected_fault_raises_the_banner_with_marker_and_words(
        console: Console, tripped: Any) -> None:
    alarm = tripped.get_by_role("group", name="HIGH PRIORITY alarm")
    expect(alarm).to_contain_text("***")
    expect(alarm).to_contain_text("HIGH PRIORITY · heat-1 · patient P-0777")
    expect(alarm).to_contain_text(re.compile("pad", re.I))
    # Red, flashing at 2 Hz (a 0.5 s cycle), never colour alone (marker and words above).
    style = alarm.evaluate("e => { const s = getComputedStyle(e); return "
                           "[s.animationName, s.animationDuration, s.animationIterationCount] }")
    assert style == ["flash-high", "0.5s", "infinite"]
    tile = tripped.get_by_role("article", name="heat-1")
    expect(tile).to_contain_text("*** Alarm:")
    expect(tile).to_contain_text("Ended by a fault")
    assert not console.room.output_on("heat-1")


def test_the_alarm_sounds_through_the_web_audio_api(tripped: Any) -> None:
    sound = tripped.evaluate("window.modctlSound")
    assert sound["state"] == "running", sound           # unlocked by the login click
    assert sound["bursts"]["high"] >= 2, sound         # two bursts of five tones
    assert sound["last"] == "high" and sound["blocked"] == 0


def test_other_pages_show_it_too(console: Console, tripped: Any) -> None:
    tripped.get_by_role("link", name="Patient history").click()
    expect(tripped.get_by_role("group", name="HIGH PRIORITY alarm")).to_be_visible()
    tripped.get_by_role("link", name="Room").click()


def test_acknowledging_silences_it_and_is_audited(console: Console, tripped: Any) -> None:
    banner = tripped.get_by_role("region", name="Alarms")
    high = banner.get_by_role("group", name="HIGH PRIORITY alarm")
    high.get_by_role("button", name=re.compile("^Acknowledge alarm on heat-1")).click()
    expect(high).to_have_count(0)
    assert all(a["priority"] != "high" for a in console.api().ok("GET", "/api/alarms")["alarms"])
    acks = console.audit("alarm.ack")
    assert acks and acks[-1]["actor"] == "alice"
    # The device's latched fault, now idle, stays a medium alarm: yellow, slower, "**".
    medium = banner.get_by_role("group", name="MEDIUM PRIORITY alarm")
    expect(medium).to_contain_text("**")
    assert medium.evaluate("e => getComputedStyle(e).animationDuration") == "2s"
    medium.get_by_role("button", name=re.compile("^Acknowledge")).click()
    expect(banner.get_by_role("group")).to_have_count(0)
    played = tripped.evaluate("window.modctlSound.played")
    tripped.wait_for_timeout(1500)                      # the repeat check runs every 1 s
    assert tripped.evaluate("window.modctlSound.played") == played
