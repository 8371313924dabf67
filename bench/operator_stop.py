"""Operator stop and e-stop latency: request_stop() to output off at the device.

N sessions run at once on simulated devices (separate processes by default).
Each session gets one stop request at its own random moment while the others
keep running and polling: `request_stop("operator")` (what the first SIGINT
posts) or `request_stop("operator", emergency=True)` (e-stop, a second SIGINT
or SIGQUIT), half each. Latency = the device's "off" in its history minus the
moment just before request_stop was called.

An operator stop is a controlled stop: the ES-4 ramps its output down over
controller.session.CONTROLLED_RAMP_DOWN_S (the model records "off" when the
ramp reaches zero), so its figures are also given to the moment the device
received the stop (off - ramp), under `to_stop_command_ms`.

    python bench/operator_stop.py
    python bench/operator_stop.py --quick
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import threading
import time
from collections import Counter
from typing import Any

from common import LEVELS, Canary, LoadMeter, LogCounter, emit, fmt_ms, models_for, summary
from runner import attribute, make_session, records, start_staggered
from simfarm import Farm, first_run, make_farm

from controller.session import CONTROLLED_RAMP_DOWN_S, Session

TARGET_MS = 20.0       # DESIGN.md §5: operator stop (SIGINT / e-stop) to output off, p99


def _stopper(plan: list[tuple[float, int, bool]], sessions: list[Session],
             asked: dict[int, float]) -> None:
    """Post each stop at its planned moment (the signal handler / e-stop button thread)."""
    for at, i, emergency in sorted(plan):
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = time.monotonic()
        sessions[i].request_stop("operator", emergency=emergency, reason="bench stop")
        asked[i] = t


def run_level(farm: Farm, n: int, rounds: int, window: tuple[float, float], stagger: float,
              use_records: bool, rng: random.Random) -> dict[str, Any]:
    lat: dict[str, list[float]] = {"operator": [], "estop": []}
    to_cmd: dict[str, list[float]] = {"operator": [], "estop": []}
    by_model: dict[str, list[float]] = {}
    outcomes: Counter[str] = Counter()
    causes: Counter[str] = Counter()
    missing = 0
    parts: dict[str, dict[str, list[float]]] = {
        kind: {k: [] for k in ("ctrl_stop", "dev_stop", "behind_poll")}
        for kind in ("operator", "estop")}
    worst: list[tuple[float, dict[str, Any]]] = []
    meter = LoadMeter()
    canary = Canary()
    cpu0 = farm.cpu_s()
    farm.tick_lateness()
    planned = stagger + window[1] + 10.0    # never reached: every session is stopped
    with records(use_records) as store:
        for rnd in range(rounds):
            devs = farm.create_many([(pid, {}) for pid in models_for(n, offset=rnd)])
            sessions = [make_session(d, planned, store) for d in devs]
            start_staggered(sessions, stagger, rng)
            # Stops come after every output is on, at random moments within the window.
            deadline = time.monotonic() + 5.0
            while any(s.t_start is None and s.report is None for s in sessions):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            base = time.monotonic()
            plan = [(base + rng.uniform(*window), i, rng.random() < 0.5) for i in range(n)]
            asked: dict[int, float] = {}
            stopper = threading.Thread(target=_stopper, args=(plan, sessions, asked))
            stopper.start()
            stopper.join()
            for s in sessions:
                s.wait(10.0)
            hists = farm.release(devs)
            emergency = {i: e for _, i, e in plan}
            for i, (dev, s, hist) in enumerate(zip(devs, sessions, hists, strict=True)):
                outcomes[s.report.outcome if s.report else "no report"] += 1
                run = first_run(hist)
                if run is None or i not in asked:
                    missing += 1
                    continue
                on, off = run
                kind = "estop" if emergency[i] else "operator"
                causes[f"{kind}:{off.cause}"] += 1
                latency = off.t - asked[i]
                lat[kind].append(latency)
                by_model.setdefault(f"{dev.pid}:{kind}", []).append(latency)
                ramp = CONTROLLED_RAMP_DOWN_S if (dev.pid == "es-4" and not emergency[i]
                                                  and off.cause == "stop") else 0.0
                to_cmd[kind].append(latency - ramp)
                # A ramped stop: the device took the command `ramp` before its output reached 0.
                timing = attribute(s, 0.0, on.t, off.t - ramp, asked=asked[i])
                if timing is not None:
                    for k in parts[kind]:
                        parts[kind][k].append(timing[k])
                worst.append((latency - ramp, {
                    "profile": dev.pid, "kind": kind, "to_off_ms": round(latency * 1e3, 2),
                    "ramp_ms": ramp * 1e3, "device_cause": off.cause,
                    **{f"{k}_ms": round(v * 1e3, 2) for k, v in (timing or {}).items()
                       if k in ("ctrl_stop", "dev_stop", "behind_poll")}}))
                worst.sort(key=lambda w: -w[0])
                del worst[5:]
    load = meter.report(extra_busy_s=farm.cpu_s() - cpu0)
    load["canary"] = canary.stop()
    load["simulator_tick_late_ms"] = summary(farm.tick_lateness(), 1e3)
    stats = {k: summary(v, 1e3) for k, v in lat.items()}
    cmd_stats = {k: summary(v, 1e3) for k, v in to_cmd.items()}
    return {
        "sessions": n,
        "rounds": rounds,
        "to_output_off_ms": stats,
        "to_stop_command_ms": cmd_stats,
        "attribution_ms": {kind: {k: summary(v, 1e3) for k, v in p.items()}
                           for kind, p in parts.items()},
        "worst": [w for _, w in worst],
        "by_model_to_output_off_ms": {k: summary(v, 1e3) for k, v in sorted(by_model.items())},
        "outcomes": dict(outcomes),
        "device_stop_causes": dict(causes),
        "missing": missing,
        "target_p99_ms": TARGET_MS,
        "target_met_estop": bool(stats["estop"].get("n"))
        and stats["estop"]["p99"] <= TARGET_MS,
        "target_met_operator_to_off": bool(stats["operator"].get("n"))
        and stats["operator"]["p99"] <= TARGET_MS,
        "target_met_operator_to_command": bool(cmd_stats["operator"].get("n"))
        and cmd_stats["operator"]["p99"] <= TARGET_MS,
        "load": load,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--samples", type=int, default=100,
                    help="stops per level at least (half of them e-stops)")
    ap.add_argument("--min-rounds", type=int, default=3)
    ap.add_argument("--stagger", type=float, default=1.0,
                    help="sessions start at random moments within this many seconds")
    ap.add_argument("--window", default="0.5,2.5",
                    help="stops come at random moments this many seconds after all started")
    ap.add_argument("--sim", choices=("process", "inprocess", "both"), default="process")
    ap.add_argument("--sim-procs", type=int, default=2)
    ap.add_argument("--records", action="store_true")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--switchinterval", type=float, default=None,
                    help="sys.setswitchinterval for this process (default: Python's 5 ms)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.levels, args.samples, args.min_rounds, args.window = "1,8", 8, 1, "0.3,1.0"
    levels = [int(x) for x in args.levels.split(",") if x]
    if args.switchinterval is not None:
        sys.setswitchinterval(args.switchinterval)
    lo, hi = (float(x) for x in args.window.split(","))
    rng = random.Random(args.seed)
    logs = LogCounter.install()
    kinds = ["process", "inprocess"] if args.sim == "both" else [args.sim]
    results: dict[str, list[dict[str, Any]]] = {}
    for kind in kinds:
        results[kind] = []
        farm = make_farm(kind, args.sim_procs)
        try:
            for n in levels:
                rounds = max(args.min_rounds, math.ceil(args.samples / n))
                t = time.monotonic()
                res = run_level(farm, n, rounds, (lo, hi), args.stagger, args.records, rng)
                res["elapsed_s"] = round(time.monotonic() - t, 1)
                res["log"] = logs.take()
                results[kind].append(res)
                print(f"# {kind} sim, {n} sessions: e-stop "
                      f"{fmt_ms(res['to_output_off_ms']['estop'])}; operator "
                      f"{fmt_ms(res['to_output_off_ms']['operator'])} to off, "
                      f"{fmt_ms(res['to_stop_command_ms']['operator'])} to command; "
                      f"canary late p99 {res['load']['canary']['wake_late_ms'].get('p99')} ms",
                      file=sys.stderr, flush=True)
        finally:
            farm.close()
    parts = []
    for kind in kinds:
        for r in results[kind]:
            e, o = r["to_output_off_ms"]["estop"], r["to_output_off_ms"]["operator"]
            c = r["to_stop_command_ms"]["operator"]
            parts.append(f"{kind} {r['sessions']}x e-stop p99 {e.get('p99')} ms, operator p99 "
                         f"{o.get('p99')} ms to off ({c.get('p99')} to command)")
    missed = [str(r["sessions"]) for r in results[kinds[0]]
              if not (r["target_met_estop"] and r["target_met_operator_to_command"])]
    line = "; ".join(parts) + "; target " + (
        "met" if not missed else f"MISSED at {','.join(missed)} sessions")
    emit("operator_stop", {
        "config": {"stagger_s": args.stagger, "window_s": [lo, hi],
                   "sim_procs": args.sim_procs, "records": args.records,
                   "controlled_ramp_down_s": CONTROLLED_RAMP_DOWN_S,
                   "samples_per_level": args.samples, "seed": args.seed, "quick": args.quick,
                   "target_p99_ms": TARGET_MS},
        "results": results,
    }, line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
