"""Operator stop and e-stop latency: request_stop() to output off at the device.

N sessions run at once on simulated devices (separate processes by default).
Each session gets one stop request at its own random moment while the others
keep running and polling: `request_stop("operator")` (what the first SIGINT
posts) or `request_stop("operator", emergency=True)` (e-stop, a second SIGINT
or SIGQUIT), half each. Latency = the device's "off" in its history minus the
moment just before request_stop was called.

An operator stop is a controlled stop: the ES-4 ramps its output down over
controller.session.worker.CONTROLLED_RAMP_DOWN_S (the model records "off" when the
ramp reaches zero), so its figures are also given to the moment the device
received the stop (off - ramp), under `to_stop_command_ms`.

The slow case (`--slow`, issue 10 item 1): every device answers a little inside
its manual's reply limit (common.SLOW_REPLY_MS: HC-200 19 ms, US-300 45 ms,
ES-4 19 ms), each session gets the periodic wake-up job `modctl session run`
gives it (runner.Wakeups), and the stops come late in the session: at each of
the `--stop-after` moments (seconds after the session's output start, plus a
random part of one poll period). Figures per model and moment are under
`slow_by_model_moment`; the target is the design's 20 ms plus one reply time.

    python bench/operator_stop.py
    python bench/operator_stop.py --quick
    python bench/operator_stop.py --slow                 # 1 and 8 sessions, +1/+20/+45 s
    python bench/operator_stop.py --slow --quick         # under 2 minutes
    python bench/operator_stop.py --reply-delay us-300=45 --wakeups --stop-after 20
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

from common import (
    LEVELS,
    MODELS,
    Canary,
    LoadMeter,
    LogCounter,
    emit,
    faults_for,
    fmt_ms,
    models_for,
    parse_reply_delay,
    parse_seconds_list,
    summary,
)
from runner import Wakeups, attribute, make_session, records, start_staggered
from simfarm import Farm, first_run, make_farm

from controller.session.worker import CONTROLLED_RAMP_DOWN_S, Session

TARGET_MS = 20.0       # DESIGN.md §5: operator stop (SIGINT / e-stop) to output off, p99
# Sessions wait this long for their stop to end them: before issue 10's fix a stop late
# in a slow session came seconds late (7.5 s at +45 s), and that must be measured too.
STOP_WAIT_S = 60.0


def _moment_plan(sessions: list[Session], stop_after: list[float], rnd: int,
                 jitter: float, rng: random.Random) -> list[tuple[float, int, bool, float]]:
    """(when, session, emergency, moment): session i is stopped `moment` seconds after its
    own output start (t_start) plus a random part of `jitter`. Models cycle with i + rnd
    (common.models_for); the moment advances every len(MODELS) sessions and rounds once
    more every len(MODELS) rounds, so that one session per round still meets every
    model at every moment (9 rounds for 3 moments)."""
    plan = []
    k = len(MODELS)
    for i, s in enumerate(sessions):
        moment = stop_after[(i // k + rnd + rnd // k) % len(stop_after)]
        began = s.t_start if s.t_start is not None else time.monotonic()
        plan.append((began + moment + rng.uniform(0.0, jitter), i, rng.random() < 0.5,
                     moment))
    return plan


def _stopper(plan: list[tuple[float, int, bool, float]], sessions: list[Session],
             asked: dict[int, float]) -> None:
    """Post each stop at its planned moment (the signal handler / e-stop button thread)."""
    for at, i, emergency, _ in sorted(plan):
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = time.monotonic()
        sessions[i].request_stop("operator", emergency=emergency, reason="bench stop")
        asked[i] = t


def run_level(farm: Farm, n: int, rounds: int, window: tuple[float, float], stagger: float,
              use_records: bool, rng: random.Random, delays: dict[str, float] | None = None,
              wakeups: bool = False, stop_after: list[float] | None = None
              ) -> dict[str, Any]:
    """`stop_after`: stop each session that many seconds after its output start (cycling
    through the list) instead of at a random moment within `window` after all started."""
    delays = delays or {}
    lat: dict[str, list[float]] = {"operator": [], "estop": []}
    by_moment: dict[str, dict[str, list[float]]] = {}      # "us-300@20" -> kind -> latencies
    late_polls: list[float] = []       # behind_poll per stop, for the slow case
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
    # Never reached: every session is stopped (with room for a stop seconds late).
    planned = stagger + (max(stop_after) if stop_after else window[1]) + STOP_WAIT_S
    jobs = Wakeups(wakeups)
    with records(use_records) as store:
        for rnd in range(rounds):
            devs = farm.create_many([(pid, faults_for(pid, delays))
                                     for pid in models_for(n, offset=rnd)])
            sessions = [make_session(d, planned, store) for d in devs]
            start_staggered(sessions, stagger, rng, before_start=jobs.add)
            # Stops come after every output is on, at random moments within the window.
            deadline = time.monotonic() + 5.0
            while any(s.t_start is None and s.report is None for s in sessions):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            base = time.monotonic()
            if stop_after:
                # One poll period of jitter: stops land anywhere in the poll cycle.
                plan = _moment_plan(sessions, stop_after, rnd,
                                    sessions[0].profile.safety.poll_period_s, rng)
            else:
                plan = [(base + rng.uniform(*window), i, rng.random() < 0.5, 0.0)
                        for i in range(n)]
            asked: dict[int, float] = {}
            stopper = threading.Thread(target=_stopper, args=(plan, sessions, asked))
            stopper.start()
            stopper.join()
            for s in sessions:
                s.wait(STOP_WAIT_S)
            jobs.clear()
            hists = farm.release(devs)
            emergency = {i: e for _, i, e, _ in plan}
            moment_of = {i: m for _, i, _, m in plan}
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
                if stop_after:
                    cell = by_moment.setdefault(f"{dev.pid}@{moment_of[i]:g}s",
                                                {"all": [], "estop": [], "operator": []})
                    cell["all"].append(latency)
                    cell[kind].append(latency)
                ramp = CONTROLLED_RAMP_DOWN_S if (dev.pid == "es-4" and not emergency[i]
                                                  and off.cause == "stop") else 0.0
                to_cmd[kind].append(latency - ramp)
                # A ramped stop: the device took the command `ramp` before its output reached 0.
                timing = attribute(s, 0.0, on.t, off.t - ramp, asked=asked[i])
                if timing is not None:
                    for k in parts[kind]:
                        parts[kind][k].append(timing[k])
                    late_polls.append(timing["behind_poll"])
                worst.append((latency - ramp, {
                    "profile": dev.pid, "kind": kind, "to_off_ms": round(latency * 1e3, 2),
                    "stop_after_s": moment_of[i] if stop_after else None,
                    "ramp_ms": ramp * 1e3, "device_cause": off.cause,
                    **{f"{k}_ms": round(v * 1e3, 2) for k, v in (timing or {}).items()
                       if k in ("ctrl_stop", "dev_stop", "behind_poll")}}))
                worst.sort(key=lambda w: -w[0])
                del worst[5:]
    jobs.close()
    load = meter.report(extra_busy_s=farm.cpu_s() - cpu0)
    load["canary"] = canary.stop()
    load["simulator_tick_late_ms"] = summary(farm.tick_lateness(), 1e3)
    stats = {k: summary(v, 1e3) for k, v in lat.items()}
    cmd_stats = {k: summary(v, 1e3) for k, v in to_cmd.items()}
    slow: dict[str, Any] = {}
    for key, cell in sorted(by_moment.items(), key=lambda kv: (kv[0].split("@")[0],
                                                               float(kv[0][:-1].split("@")[1]))):
        pid = key.split("@")[0]
        target = TARGET_MS + delays.get(pid, 0.0)
        stats_all = summary(cell["all"], 1e3)
        slow[key] = {"to_output_off_ms": stats_all,
                     "estop_ms": summary(cell["estop"], 1e3),
                     "operator_ms": summary(cell["operator"], 1e3),
                     "reply_delay_ms": delays.get(pid, 0.0),
                     "target_p99_ms": target,
                     "target_met": bool(stats_all.get("n")) and stats_all["p99"] <= target}
    return {
        "sessions": n,
        "rounds": rounds,
        "reply_delay_ms": delays,
        "wakeups": wakeups,
        "stop_after_s": stop_after,
        "slow_by_model_moment": slow,
        "behind_poll_ms": summary(late_polls, 1e3),
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
    ap.add_argument("--slow", action="store_true",
                    help="devices at the slow end of their manuals (common.SLOW_REPLY_MS), "
                    "wake-up jobs as `session run`, stops late (--stop-after); levels 1,8")
    ap.add_argument("--reply-delay", default="",
                    help="MODEL=MS,... reply delay per model (over the --slow defaults)")
    ap.add_argument("--wakeups", action="store_true",
                    help="give each session the periodic wake-up job (implied by --slow)")
    ap.add_argument("--stop-after", default="",
                    help="stop each session this many s after its output start, e.g. "
                    "1,20,45 (the --slow default); otherwise at random within --window")
    args = ap.parse_args(argv)
    if args.slow:
        args.wakeups = True
        args.stop_after = args.stop_after or "1,20,45"
        if args.levels == ",".join(map(str, LEVELS)):
            args.levels = "1,8"
        if args.samples == 100:
            args.samples = 9        # one session: 3 stops per moment; 8 sessions: 3 rounds
    if args.quick:
        args.levels, args.samples, args.min_rounds, args.window = "1,8", 8, 1, "0.3,1.0"
        if args.slow:
            # Under 2 minutes: one session stopped at +1 s and at +20 s, 8 sessions once.
            args.stop_after, args.samples = "1,20", 2
    delays = parse_reply_delay(args.reply_delay, args.slow)
    stop_after = parse_seconds_list(args.stop_after, "--stop-after") if args.stop_after \
        else None
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
                res = run_level(farm, n, rounds, (lo, hi), args.stagger, args.records, rng,
                                delays, args.wakeups, stop_after)
                res["elapsed_s"] = round(time.monotonic() - t, 1)
                res["log"] = logs.take()
                results[kind].append(res)
                for key, cell in res["slow_by_model_moment"].items():
                    print(f"#   {key}: {fmt_ms(cell['to_output_off_ms'])} (target p99 "
                          f"{cell['target_p99_ms']:g} ms)", file=sys.stderr, flush=True)
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
    if stop_after:
        # Slow devices: the target is per model, 20 ms plus one reply time.
        worst_cells = [f"{r['sessions']}x {key} p99 {cell['to_output_off_ms'].get('p99')}"
                       for r in results[kinds[0]]
                       for key, cell in r["slow_by_model_moment"].items()]
        missed = [f"{r['sessions']}x {key}" for r in results[kinds[0]]
                  for key, cell in r["slow_by_model_moment"].items()
                  if not cell["target_met"]]
        parts = ["to off ms: " + ", ".join(worst_cells)]
    line = "; ".join(parts) + "; target " + (
        "met" if not missed else f"MISSED at {', '.join(missed)}"
        + ("" if stop_after else " sessions"))
    emit("operator_stop", {
        "config": {"stagger_s": args.stagger, "window_s": [lo, hi],
                   "slow": args.slow, "reply_delay_ms": delays, "wakeups": args.wakeups,
                   "stop_after_s": stop_after, "stop_wait_s": STOP_WAIT_S,
                   "sim_procs": args.sim_procs, "records": args.records,
                   "controlled_ramp_down_s": CONTROLLED_RAMP_DOWN_S,
                   "samples_per_level": args.samples, "seed": args.seed, "quick": args.quick,
                   "target_p99_ms": TARGET_MS},
        "results": results,
    }, line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
