"""Scale: how many concurrent devices one controller process holds at >= 5 Hz telemetry
each while the stop error stays within target (p99 <= 20 ms).

For each device count N (ascending) every session runs a planned `--planned` s
output on its own simulated device (separate simulator processes). Per level:

- telemetry rate per session, from the Session's on_update hook (called after
  every successful poll while the output runs): rate = (polls - 1) / span, and
  the gaps between polls;
- stop error at the device (as bench/stop_error.py);
- controller CPU (getrusage) and memory (VmRSS) per device.

A level passes when every session polled at >= 4.95 Hz, p99 of the gaps is at
most 1.25 poll periods, every session completed and |stop error| p99 <= 20 ms.
The search stops after `--fail-stop` failing levels in a row.

    python bench/scale.py
    python bench/scale.py --levels 16,32,64 --quick
"""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import resource
import sys
import threading
import time
from collections import Counter
from typing import Any

from common import Canary, LoadMeter, LogCounter, emit, models_for, summary, vm_rss_kib
from runner import attribute, make_session, records, start_staggered
from simfarm import Farm, first_run, make_farm

from controller.session.report import Snapshot
from controller.session.worker import Session

STOP_TARGET_MS = 20.0
MIN_RATE_HZ = 4.95
GAP_P99_PERIODS = 1.25
POLL_PERIOD_S = 0.2     # every shipped profile's safety.poll_period_s


class _PollLog:
    """on_update hook: the monotonic time of every successful poll of one session."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, snapshot: Snapshot) -> None:
        self.times.append(time.monotonic())


def run_level(farm: Farm, n: int, planned: float, rounds: int, stagger: float,
              use_records: bool, rng: random.Random) -> dict[str, Any]:
    errors: list[float] = []
    rates: list[float] = []
    gaps: list[float] = []
    outcomes: Counter[str] = Counter()
    threads_peak = 0
    rss_base = rss_peak = 0
    parts: dict[str, list[float]] = {k: [] for k in ("ctrl_start", "dev_start", "ctrl_stop",
                                                      "dev_stop", "behind_poll")}
    worst: list[tuple[float, dict[str, Any]]] = []
    ctrl_share: list[float] = []
    gc.collect()
    meter = LoadMeter()
    canary = Canary()
    cpu0 = farm.cpu_s()
    farm.tick_lateness()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    run_wall = 0.0
    with records(use_records) as store:
        for rnd in range(rounds):
            rss_base = vm_rss_kib()
            devs = farm.create_many([(pid, {}) for pid in models_for(n, offset=rnd)])
            logs = [_PollLog() for _ in devs]
            sessions: list[Session] = [make_session(d, planned, store, on_update=log)
                                       for d, log in zip(devs, logs, strict=True)]
            t_run = time.monotonic()
            start_staggered(sessions, stagger, rng)
            # Sample memory and threads while everything runs.
            time.sleep(min(1.0, planned / 2))
            rss_peak = max(rss_peak, vm_rss_kib())
            threads_peak = max(threads_peak, threading.active_count())
            for s in sessions:
                s.wait(planned + 30)
            run_wall += time.monotonic() - t_run
            hists = farm.release(devs)
            for s, log, hist in zip(sessions, logs, hists, strict=True):
                outcomes[s.report.outcome if s.report else "no report"] += 1
                run = first_run(hist)
                if run is not None:
                    on, off = run
                    err = (off.t - on.t) - planned
                    errors.append(err)
                    timing = attribute(s, planned, on.t, off.t)
                    if timing is not None:
                        for k in parts:
                            parts[k].append(timing[k])
                        ctrl_share.append(timing["ctrl_stop"] - timing["ctrl_start"])
                    worst.append((abs(err), {"profile": s.profile.id,
                                             "error_ms": round(err * 1e3, 2),
                                             **{f"{k}_ms": round(v * 1e3, 2)
                                                for k, v in (timing or {}).items()}}))
                    worst.sort(key=lambda w: -w[0])
                    del worst[5:]
                t = log.times
                if len(t) >= 2:
                    rates.append((len(t) - 1) / (t[-1] - t[0]))
                    gaps.extend(b - a for a, b in itertools.pairwise(t))
                else:
                    rates.append(0.0)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    load = meter.report(extra_busy_s=farm.cpu_s() - cpu0)
    load["canary"] = canary.stop()
    load["simulator_tick_late_ms"] = summary(farm.tick_lateness(), 1e3)
    cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    abs_ms = summary([abs(e) for e in errors], 1e3)
    gap_ms = summary(gaps, 1e3)
    rate_ok = bool(rates) and min(rates) >= MIN_RATE_HZ and \
        gap_ms.get("p99", 1e9) <= GAP_P99_PERIODS * POLL_PERIOD_S * 1e3
    stop_ok = bool(errors) and abs_ms["p99"] <= STOP_TARGET_MS
    completed = outcomes.get("completed", 0) == n * rounds
    share_ms = summary([abs(x) for x in ctrl_share], 1e3)
    share_ok = bool(ctrl_share) and share_ms["p99"] <= STOP_TARGET_MS
    return {
        "devices": n,
        "rounds": rounds,
        "poll_rate_hz": summary(rates, 1.0, 3),
        "poll_gap_ms": gap_ms,
        "abs_stop_error_ms": abs_ms,
        "stop_error_ms": summary(errors, 1e3),
        "outcomes": dict(outcomes),
        "attribution_ms": {k: summary(v, 1e3) for k, v in parts.items()},
        "controller_share_abs_ms": share_ms,
        "worst": [w for _, w in worst],
        "controller_cpu_cores": round(cpu_s / run_wall, 3) if run_wall else None,
        "controller_cpu_ms_per_device_s": round(cpu_s / run_wall / n * 1e3, 2)
        if run_wall else None,
        "rss_base_mib": round(rss_base / 1024, 1),
        "rss_peak_mib": round(rss_peak / 1024, 1),
        "rss_per_device_kib": round((rss_peak - rss_base) / n, 1),
        "threads_peak": threads_peak,
        "rate_ok": rate_ok,
        "stop_ok": stop_ok,
        "all_completed": completed,
        "passed": rate_ok and stop_ok and completed,
        "controller_share_ok": share_ok,
        "load": load,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="16,32,48,64,80,96,128,160,192,256")
    ap.add_argument("--planned", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--stagger", type=float, default=1.0)
    ap.add_argument("--sim-procs", type=int, default=2)
    ap.add_argument("--sim", choices=("process", "inprocess"), default="process")
    ap.add_argument("--records", action="store_true")
    ap.add_argument("--fail-stop", type=int, default=2,
                    help="stop after this many failing levels in a row")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--switchinterval", type=float, default=None,
                    help="sys.setswitchinterval for this process (default: Python's 5 ms)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.levels, args.planned, args.rounds = "8,32,64", 2.0, 1
    levels = [int(x) for x in args.levels.split(",") if x]
    if args.switchinterval is not None:
        sys.setswitchinterval(args.switchinterval)
    rng = random.Random(args.seed)
    logs = LogCounter.install()
    results: list[dict[str, Any]] = []
    farm = make_farm(args.sim, args.sim_procs)
    failures = 0
    try:
        for n in levels:
            res = run_level(farm, n, args.planned, args.rounds, args.stagger, args.records, rng)
            res["log"] = logs.take()
            results.append(res)
            print(f"# {n} devices: rate min {res['poll_rate_hz'].get('min')} Hz, gap p99 "
                  f"{res['poll_gap_ms'].get('p99')} ms, |stop err| p99 "
                  f"{res['abs_stop_error_ms'].get('p99')} ms (controller share p99 "
                  f"{res['controller_share_abs_ms'].get('p99')} ms), sim tick late p99 "
                  f"{res['load']['simulator_tick_late_ms'].get('p99')} ms, cpu "
                  f"{res['controller_cpu_cores']} cores, "
                  f"{'pass' if res['passed'] else 'FAIL'}", file=sys.stderr, flush=True)
            failures = 0 if res["passed"] else failures + 1
            if failures >= args.fail_stop:
                break
    finally:
        farm.close()
    passing = [r["devices"] for r in results if r["passed"]]
    largest = max(passing) if passing else 0
    # The largest N such that it and every level below it passed.
    held = 0
    for r in results:
        if not r["passed"]:
            break
        held = r["devices"]
    best = next((r for r in results if r["devices"] == held), None)
    line = (f"held {held} devices (largest passing level {largest}) at >= {MIN_RATE_HZ} Hz "
            f"with stop p99 <= {STOP_TARGET_MS} ms")
    if best:
        line += (f"; at {held}: controller {best['controller_cpu_ms_per_device_s']} ms CPU/s "
                 f"and {best['rss_per_device_kib']} KiB RSS per device")
    line += "; target >= 64 " + ("met" if held >= 64 else "MISSED")
    emit("scale", {"config": {"planned_s": args.planned, "rounds": args.rounds,
                              "stagger_s": args.stagger, "sim_procs": args.sim_procs,
                              "sim": args.sim, "records": args.records, "quick": args.quick,
                              "criteria": {"min_rate_hz": MIN_RATE_HZ,
                                           "gap_p99_max_ms": GAP_P99_PERIODS * POLL_PERIOD_S
                                           * 1e3, "stop_p99_max_ms": STOP_TARGET_MS}},
                   "results": results, "held_devices": held, "largest_passing": largest},
         line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
