"""The console's latencies in a real browser (issue 13): E-STOP ALL click -> every simulated
output off, and a device's state change -> its tile showing it.

Setup: N simulated devices (HC-200, US-300, ES-4 in turn) on ptys in this process,
registered and calibrated, a real `modctl serve` process, Debian's chromium driven by
Playwright, logged in as a clinician on the room view.

- E-stop: N sessions of 120 s are started over the API; a thread polls every simulator's
  output state every 0.5 ms (device-side truth, in this process); the driver notes
  time.monotonic() just before pressing F9 (the E-STOP ALL shortcut) and each device's
  latency is its first "off" reading minus that. Repeated R times.
- Tile: one session is started over the API; the poll thread notes when the device's output
  comes on (the state change at the device); a MutationObserver injected into the page notes
  `Date.now()` when that tile's state text first reads "delivering" (or "ramping"); the
  latency is the tile time minus the device time, both on this machine's wall clock
  (time.time() and Date.now() read the same clock). Repeated R times.

    python bench/console_latency.py --quick        # about a minute
    python bench/console_latency.py                # 8 devices, 20 rounds each
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.records.store import RecordStore  # noqa: E402
from tests.support.service import (  # noqa: E402
    PASSWORD,
    Client,
    add_device,
    add_users,
    simulators,
    start_service,
)

PROFILES = ("hc-200", "us-300", "es-4")
SETTINGS = {"hc-200": {"temperature_c": 40}, "us-300": {"intensity_w_cm2": 1.0},
            "es-4": {"amplitude_ma": 10}}
POLL_S = 0.0005
OBSERVER = """(name) => { window.__tileSeen = new Promise((resolve) => {
  const tile = [...document.querySelectorAll('article.tile')]
      .find((t) => t.textContent.includes(name));
  const state = tile.querySelector('.state');
  const seen = () => /delivering|ramping/i.test(state.textContent);
  const obs = new MutationObserver(() => {
    if (seen()) { obs.disconnect(); resolve(Date.now()); }
  });
  obs.observe(state, {subtree: true, childList: true, characterData: true});
}); }"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": round(statistics.median(values), 2),
            "p99": round(pct(values, 0.99), 2), "max": round(max(values), 2)}


class Watcher:
    """Polls every simulator's output state; keeps the first time each went on / off."""

    def __init__(self, sims: dict[str, Any]) -> None:
        self.sims = sims
        self.events: dict[str, list[tuple[float, float, bool]]] = {n: [] for n in sims}
        self._stop = threading.Event()
        self._last = {n: False for n in sims}
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, sim in self.sims.items():
                with sim.model.lock:
                    on = bool(sim.model.output_on)
                if on != self._last[name]:
                    self._last[name] = on
                    self.events[name].append((time.monotonic(), time.time(), on))
            time.sleep(POLL_S)

    def first(self, name: str, on: bool, after: float) -> tuple[float, float] | None:
        for mono, wall, state in self.events[name]:
            if state == on and mono >= after:
                return mono, wall
        return None

    def close(self) -> None:
        self._stop.set()


def wait(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="3 rounds each")
    ap.add_argument("--out", default=str(ROOT / "bench/results/console_latency.json"))
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="modctl-console-bench-"))
    profiles = [PROFILES[i % 3] for i in range(args.devices)]
    sims = dict(zip((f"dev-{i + 1}" for i in range(args.devices)), simulators(*profiles),
                    strict=True))
    with RecordStore(tmp / "records.sqlite3") as store:
        add_users(store, alice="clinician")
        for name, sim in sims.items():
            add_device(store, name, sim.profile.id, sim.port)
    service = start_service(tmp / "records.sqlite3")
    watcher = Watcher(sims)
    api = Client(service.base).login("alice")
    estop_ms: list[float] = []
    last_ms: list[float] = []
    tile_ms: list[float] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(service.base + "/login")
            page.get_by_label("User name").fill("alice")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(service.base + "/")
            page.wait_for_selector("article.tile")
            for _ in range(rounds):
                wait(lambda: all(d["state"] == "idle"
                                 for d in api.ok("GET", "/api/devices")["devices"]), 20)
                for name, sim in sims.items():
                    api.ok("POST", "/api/sessions", {"device": name, "duration": "120s",
                                                     "settings": SETTINGS[sim.profile.id],
                                                     "clear_fault": True})
                wait(lambda: all(sim.model.output_on for sim in sims.values()), 10)
                time.sleep(0.5)
                t0 = time.monotonic()
                page.keyboard.press("F9")
                assert wait(lambda: not any(s.model.output_on for s in sims.values()), 5)
                offs = [watcher.first(n, False, t0) for n in sims]
                lat = [(o[0] - t0) * 1000 for o in offs if o is not None]
                estop_ms += lat
                last_ms.append(max(lat))
                print(f"e-stop round: last device {max(lat):.1f} ms", file=sys.stderr, flush=True)
            for i in range(rounds):
                name = list(sims)[i % len(sims)]
                wait(lambda n=name: api.ok("GET", f"/api/devices/{n}")["state"] == "idle", 20)
                time.sleep(0.3)
                page.evaluate(OBSERVER, name)
                t0 = time.monotonic()
                api.ok("POST", "/api/sessions", {"device": name, "duration": "3s",
                                                 "settings": SETTINGS[sims[name].profile.id],
                                                 "clear_fault": True})
                shown = float(page.evaluate("() => window.__tileSeen"))
                on = watcher.first(name, True, t0)
                if on is not None:
                    tile_ms.append(shown - on[1] * 1000)
                    print(f"tile round: {tile_ms[-1]:.1f} ms", file=sys.stderr, flush=True)
                api.ok("POST", "/api/estop")
            browser.close()
    finally:
        watcher.close()
        service.stop()
        for sim in sims.values():
            sim.stop()
    load = Path("/proc/loadavg").read_text().split()[:3]
    result = {"devices": args.devices, "rounds": rounds, "loadavg": load,
              "estop_click_to_off_ms": summary(estop_ms),
              "estop_click_to_last_off_ms": summary(last_ms),
              "device_change_to_tile_ms": summary(tile_ms) if tile_ms else None}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
