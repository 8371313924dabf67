"""The console's latencies in a real browser (issue 13): the E-STOP ALL click -> every
simulated output off, and a device's state change -> its tile showing it.

Setup as service_estop.py: `modctl serve` (its own process) holds N simulated devices out
of process (simfarm.ProcessFarm, clinic.Clinic); Debian's chromium (Playwright) is logged in
as a clinician on the room view. Device-side truth: each simulator's output history
(`OutputChange.t`, time.monotonic(), system-wide on Linux), as the other service benches.

- E-stop: N sessions of 60 s started over the API (one thread each); once every output is
  on, after a random 0.5-1.5 s, the driver reads time.monotonic() just before
  `page.keyboard.press("F9")` (the E-STOP ALL shortcut); each device's latency is its
  first output-off after that minus it. The figure therefore includes Playwright's own hop
  (Python -> driver -> CDP -> key event); a capture-phase keydown listener in the page also
  stamps Date.now() to show that hop (`driver_to_keydown_ms`).
- Tile: one session of 1 s is started over the API on one device (round robin). Two device
  changes per round: its output coming on (-> tile `data-state="delivering"`) and going off
  at the session's end, the service's stop at the planned time (-> `data-state="idle"`).
  A MutationObserver injected into the page on the tile's `data-state` attribute stamps
  Date.now() for each change (1 ms resolution);
  latency = that stamp - (the device's history time + (time.time() - time.monotonic()),
  taken in this process, the same host clock chromium's Date.now() reads).

    python bench/console_latency.py --quick        # under a minute
    python bench/console_latency.py                # 8 devices, 30 e-stops, 30 tile rounds
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from clinic import PASSWORD, USER, Clinic, run_after, start_all
from common import LoadMeter, emit, fmt_ms, models_for, summary

ESTOP_TARGET_MS = 100.0   # issue 13: E-STOP ALL click -> every output off, p99
TILE_TARGET_MS = 250.0    # issue 13: device state change -> tile shows it, p99
LONG_S = 60.0             # e-stop rounds' sessions: never reached, the e-stop ends them
TILE_SESSION_S = 1.0      # tile rounds: short, so the timer's end is the second change
START_WAIT_S = 30.0      # the service's first look at every device, after it starts
WAIT_S = 10.0             # how long any one expected change may take before it is "missing"
CHROMIUM = "/usr/bin/chromium"
BUSY = {"arming", "delivering", "holding", "stopping", "?"}

# The tile log: [Date.now(), data-state] per change of each tile's data-state attribute.
OBSERVE = """() => {
  window.__tileLog = {};
  for (const tile of document.querySelectorAll('article.tile')) {
    const name = tile.querySelector('h2').textContent;
    const log = window.__tileLog[name] = [];
    new MutationObserver(() => log.push([Date.now(), tile.dataset.state]))
      .observe(tile, {attributes: true, attributeFilter: ['data-state']});
  }
  window.__keydown = [];
  window.addEventListener('keydown', (e) => {
    if (e.key === 'F9') window.__keydown.push(Date.now());
  }, {capture: true});
}"""


def wall_offset() -> float:
    """time.time() - time.monotonic(), to put device history times on the wall clock."""
    a = time.monotonic()
    w = time.time()
    b = time.monotonic()
    return w - (a + b) / 2


def wait_for(check: Any, timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def states(clinic: Clinic) -> list[str]:
    status, body = clinic.http().call("GET", "/api/devices")
    return [d["state"] for d in body["devices"]] if status == 200 else ["?"]


def settled(clinic: Clinic) -> bool:
    """No session on any device (an e-stop leaves its devices in `fault`, latched, until
    the next session clears it: not busy)."""
    return not set(states(clinic)) & BUSY


def ran(clinic: Clinic, idx: list[int], t0: float, ended: bool) -> bool:
    """Every device in idx had its output on since t0 (and off again, when `ended`)."""
    runs = [run_after(h, t0) for h in clinic.histories(idx)]
    return all(r is not None and (not ended or r[1] is not None) for r in runs)


def tile_shows(page: Any, name: str, state: str) -> bool:
    return bool(page.evaluate(f"() => window.__tileLog[{name!r}].some(([, s]) => s === "
                              f"{state!r})"))


def estop_rounds(clinic: Clinic, page: Any, rounds: int, rng: random.Random
                 ) -> dict[str, Any]:
    idx = list(range(len(clinic.devs)))
    lat: list[float] = []
    last: list[float] = []
    hop: list[float] = []
    missing = 0
    refused: list[str] = []
    for r in range(rounds):
        wait_for(lambda: settled(clinic))
        starts = start_all(clinic, idx, LONG_S, [0.0] * len(idx))
        refused += [f"{clinic.names[i]}: {status} {str(body.get('error', body))[:240]}"
                    for i, (_, status, body) in sorted(starts.items()) if status != 201]
        ok = [i for i, (_, status, _) in sorted(starts.items()) if status == 201]
        t_start = min(sent for sent, _, _ in starts.values())
        wait_for(partial(ran, clinic, ok, t_start, False))
        time.sleep(rng.uniform(0.5, 1.5))
        off_wall = wall_offset()
        t0 = time.monotonic()
        page.keyboard.press("F9")
        wait_for(partial(ran, clinic, ok, t_start, True))
        this = []
        for h in clinic.histories(ok):
            run = run_after(h, t_start)
            if run is None or run[1] is None or run[1].t < t0:
                missing += 1
                continue
            this.append(run[1].t - t0)
        lat += this
        if this:
            last.append(max(this))
        keydown = page.evaluate("() => window.__keydown.pop()")
        if keydown is not None:
            hop.append(keydown / 1e3 - (t0 + off_wall))
        print(f"# e-stop {r + 1}/{rounds}: last of {len(this)} off "
              f"{max(this, default=0) * 1e3:.1f} ms", file=sys.stderr, flush=True)
    stats = summary(lat, 1e3)
    return {"to_output_off_ms": stats, "last_device_ms": summary(last, 1e3),
            "driver_to_keydown_ms": summary(hop, 1e3), "missing": missing,
            "refused_starts": refused, "target_p99_ms": ESTOP_TARGET_MS,
            "target_met": bool(stats.get("n")) and stats["p99"] <= ESTOP_TARGET_MS
            and not missing}


def tile_rounds(clinic: Clinic, page: Any, rounds: int) -> dict[str, Any]:
    on_ms: list[float] = []
    off_ms: list[float] = []
    missing = 0
    for r in range(rounds):
        i = r % len(clinic.devs)
        name = clinic.names[i]
        wait_for(lambda: settled(clinic))
        time.sleep(0.2)
        page.evaluate(f"() => {{ window.__tileLog[{name!r}].length = 0; }}")
        t0 = time.monotonic()
        status, body = clinic.http().call("POST", "/api/sessions",
                                          clinic.start_body(i, TILE_SESSION_S))
        if status != 201:
            print(f"# tile {r + 1}: start refused {status} {body}", file=sys.stderr)
            missing += 2
            continue
        ok = wait_for(partial(ran, clinic, [i], t0, True), TILE_SESSION_S + WAIT_S)
        ok = ok and wait_for(partial(tile_shows, page, name, "idle"))
        off_wall = wall_offset()
        run = run_after(clinic.histories([i])[0], t0)
        log = page.evaluate(f"() => window.__tileLog[{name!r}]")
        shown_on = next((t for t, s in log if s == "delivering"), None)
        shown_off = next((t for t, s in log if s == "idle"), None)
        if not ok or run is None or run[1] is None or shown_on is None or shown_off is None:
            missing += 2
            continue
        on_ms.append(shown_on - (run[0].t + off_wall) * 1e3)
        off_ms.append(shown_off - (run[1].t + off_wall) * 1e3)
        print(f"# tile {r + 1}/{rounds} {name}: on {on_ms[-1]:.1f} ms, off "
              f"{off_ms[-1]:.1f} ms ({run[1].cause})", file=sys.stderr, flush=True)
    both = summary(on_ms + off_ms)
    return {"output_on_to_tile_delivering_ms": summary(on_ms),
            "output_off_to_tile_ready_ms": summary(off_ms), "all_changes_ms": both,
            "missing": missing, "target_p99_ms": TILE_TARGET_MS,
            "target_met": bool(both.get("n")) and both["p99"] <= TILE_TARGET_MS
            and not missing}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=8, help="devices, all in session")
    ap.add_argument("--rounds", type=int, default=30, help="e-stops, and tile rounds")
    ap.add_argument("--sim-procs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--quick", action="store_true", help="under a minute (5 rounds each)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = 5
    if args.devices < 1 or args.rounds < 1:
        raise SystemExit("--devices and --rounds need positive integers")
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} not found (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    t_begin = time.monotonic()
    rng = random.Random(args.seed)
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    clinic = Clinic.open(models_for(args.devices), args.sim_procs)
    meter = LoadMeter()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(clinic.base + "/login")
            page.get_by_label("User name").fill(USER)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(clinic.base + "/")
            page.wait_for_function(f"() => document.querySelectorAll('article.tile').length"
                                   f" === {args.devices}")
            page.evaluate(OBSERVE)
            # The service probes each device once at start-up: wait until all are ready.
            if not wait_for(lambda: set(states(clinic)) == {"idle"}, START_WAIT_S):
                print(f"# not every device idle: {states(clinic)}", file=sys.stderr)
            estop = estop_rounds(clinic, page, args.rounds, rng)
            tile = tile_rounds(clinic, page, args.rounds)
            browser.close()
    finally:
        code = clinic.close()
    machine = meter.report()
    load1 = Path("/proc/loadavg").read_text().split()[:3]
    line = (f"{args.devices} devices; E-STOP ALL click -> off {fmt_ms(estop['to_output_off_ms'])}"
            f" (target p99 {ESTOP_TARGET_MS:g} ms {'met' if estop['target_met'] else 'MISSED'}"
            f"; {len(estop['refused_starts'])} session starts refused)"
            f"; change -> tile {fmt_ms(tile['all_changes_ms'])} (target p99 "
            f"{TILE_TARGET_MS:g} ms {'met' if tile['target_met'] else 'MISSED'})")
    emit("console_latency", {
        "config": {"devices": args.devices, "rounds": args.rounds, "quick": args.quick,
                   "sim_procs": args.sim_procs, "seed": args.seed, "browser": CHROMIUM},
        "estop_all_click": estop, "state_change_to_tile": tile,
        "loadavg_before": load0, "loadavg_after": load1, "load": machine,
        "service_exit_status": code, "elapsed_s": round(time.monotonic() - t_begin, 1)}, line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
