"""Screenshots of the console for docs/console.md and the README, taken in Debian's chromium
against a real `modctl serve` with simulated devices (the browser tests' own room).

    python docs/images/make_screenshots.py        # writes docs/images/console-*.png

Each is 1280x800, the clinic PC the console is laid out for. The pictures are kept small:
reduced to a 256-colour palette when Pillow is installed (it comes with matplotlib).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import expect  # noqa: E402

from tests.support.browser import Console, open_console  # noqa: E402

OUT = Path(__file__).resolve().parent
PATIENTS = {"heat-1": "P-0042", "us-1": "P-0107", "tens-1": "P-0311"}


def shrink(path: Path) -> None:
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def shot(page: object, name: str) -> None:
    path = OUT / f"console-{name}.png"
    page.screenshot(path=str(path))  # type: ignore[attr-defined]
    shrink(path)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KiB)")


def pad_comes_off(console: Console, device: str) -> None:
    """The simulated pad of `device` comes off now (the fault plan's `pad_off_at`)."""
    model = console.room.sims[device].model
    with model.lock:
        model.faults = dataclasses.replace(model.faults, pad_off_at=0.0)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, open_console(Path(tmp)) as console:
        page = console.page("alice")
        page.wait_for_timeout(500)
        shot(page, "room-idle")
        durations = {"heat-1": "20m", "us-1": "8m", "tens-1": "15m"}
        for device, patient in PATIENTS.items():
            console.start(device, duration=durations[device], patient=patient)
        for device in PATIENTS:
            expect(page.get_by_role("article", name=device)).to_contain_text("Delivering")
        page.wait_for_timeout(6000)         # the pad warms, the countdowns run
        shot(page, "room-running")
        pad_comes_off(console, "heat-1")
        expect(page.get_by_role("group", name="HIGH PRIORITY alarm")).to_be_visible()
        page.wait_for_timeout(300)
        shot(page, "room-alarm")
        alarms = page.get_by_role("region", name="Alarms").get_by_role("group")
        while alarms.count():
            alarms.first.get_by_role("button", name="Acknowledge").click()
            page.wait_for_timeout(200)
        page.goto(console.base + "/start?device=us-1#hand")
        form = page.get_by_role("region", name="By hand")
        form.get_by_role("textbox", name="Intensity (W/cm²)").fill("2.5")
        form.get_by_role("textbox", name="Duration").fill("8m")
        form.get_by_role("textbox", name="Patient id").fill("P-0108")
        form.get_by_role("button", name="Review and start…").click()
        page.get_by_role("button", name="Confirm patient P-0108 and start").click()
        expect(form.get_by_role("textbox", name="Intensity (W/cm²)")) \
            .to_have_attribute("aria-invalid", "true")
        page.mouse.move(0, 0)
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, "start-form")
        console.quiet()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
