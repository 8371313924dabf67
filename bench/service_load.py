"""Stop error and operator stop through the clinic service, under live-stream and GET load.

`modctl serve` runs in its own process and holds every simulated device (simulators out of
process, simfarm.ProcessFarm). Sessions are started over the API (POST /api/sessions, one
thread per request, at random moments within `--stagger`), while a separate load process
(loadgen.py) keeps 20 clients on GET /api/events (17 reading, 1 pausing, 1 slow, 1 never
reading) and a flood of GET requests going. Two measurements per level:

- stop error: sessions of `--planned` s end on their own; |(off - on) - planned| from the
  device's own history (p50/p99/max; target p99 <= 5 ms at 1 session, <= 20 ms at 32);
- operator stop: long sessions, each stopped at a random moment by POST
  /api/sessions/{id}/stop (controlled) or /estop, half each; latency = output off at the
  device minus the moment just before the request was sent (target p99 <= 20 ms). The ES-4
  ramps a controlled stop down over CONTROLLED_RAMP_DOWN_S: `to_stop_command_ms` takes it
  off, as operator_stop.py does.

Also reported: the HTTP answers, how long after a stop (or an output's end) each live-stream
client received the session's final event, the flood's rate and latency, the stalled
client's drop, and the CPU of the service, the simulators, the load and everyone else.

    python bench/service_load.py                  # 1 and 32 sessions, about 6 minutes
    python bench/service_load.py --quick          # under a minute
    python bench/service_load.py --clients 0 --flood 0    # the service without load
"""

from __future__ import annotations

import argparse
import http.client
import random
import sys
import threading
import time
from collections import Counter
from typing import Any

from clinic import Clinic, proc_cpu_s, run_after, stall_inside, start_all, without_stalls
from common import Canary, LoadMeter, emit, fmt_ms, models_for, summary
from loadgen import CLIENT_MIX, LoadGen, client_mix, clients_summary
from serve_probe import probe_figures

from controller.session.worker import CONTROLLED_RAMP_DOWN_S

# docs/design.md §5 and issue 12: stop error p99 at 1 session / with 32 at once.
STOP_ERROR_TARGET_MS = {1: 5.0, 8: 20.0, 32: 20.0}
OPERATOR_TARGET_MS = 20.0
# Operator-stop sessions are planned this long: never reached, every one is stopped.
LONG_S = 60.0
# How long after its planned end a stop-error round waits for every output to be off.
END_WAIT_S = 10.0
# A stop's connection is opened this long before it is sent (inside uvicorn's 5 s
# keep-alive), so the TCP set-up is not in the measured time; the request is.
PRECONNECT_S = 0.3
# A planned stop is looked at for simulator stalls from this long before its planned end
# (a poll in flight then, answered late in a stall, holds the stop): one poll period.
STALL_LEAD_S = 0.2


def _devices(clinic: Clinic, n: int, rnd: int) -> list[int]:
    """n of the held devices, rotating per round (one session meets every model)."""
    count = len(clinic.devs)
    return [(rnd * n + k) % count for k in range(n)]


def _started(starts: dict[int, tuple[float, int, dict[str, Any]]],
             refused: Counter[str]) -> dict[int, tuple[float, str]]:
    ok = {}
    for i, (sent, status, body) in starts.items():
        if status == 201 and body.get("id"):
            ok[i] = (sent, str(body["id"]))
        else:
            refused[f"{status}: {str(body.get('error', body))[:120]}"] += 1
    return ok


def _wait_off(clinic: Clinic, ok: dict[int, tuple[float, str]], until: float) -> list[Any]:
    """The devices' histories once each started output is off again (or at `until`)."""
    idx = sorted(ok)
    while True:
        hists = clinic.histories(idx)
        runs = [run_after(h, ok[i][0]) for i, h in zip(idx, hists, strict=True)]
        if all(r is None or r[1] is not None for r in runs) or time.monotonic() > until:
            return runs
        time.sleep(0.2)


def stop_error_level(clinic: Clinic, load: LoadGen | None, n: int, planned: float,
                     rounds: int, stagger: float, rng: random.Random, t0: float
                     ) -> dict[str, Any]:
    errors: list[float] = []
    by_model: dict[str, list[float]] = {}
    refused: Counter[str] = Counter()
    causes: Counter[str] = Counter()
    start_lag: list[float] = []        # device on minus the moment the request was sent
    missing = 0
    off_at: dict[str, float] = {}      # session id -> output off (for the screens' latency)
    ends: list[tuple[str, float, float]] = []          # (port, on, off) for the probe
    spans: list[tuple[float, float, float]] = []       # (|error|, from, to) for the stalls
    worst: list[tuple[float, dict[str, Any]]] = []
    if load:
        load.take()
    meter, canary = LoadMeter(), Canary()
    cpu0 = _cpus(clinic, load)
    clinic.farm.stalls()
    for rnd in range(rounds):
        idx = _devices(clinic, n, rnd)
        ok = _started(start_all(clinic, idx, planned,
                                [rng.uniform(0.0, stagger) for _ in idx]), refused)
        if not ok:
            continue
        last = max(sent for sent, _ in ok.values())
        time.sleep(max(0.0, last + planned - time.monotonic()))
        runs = _wait_off(clinic, ok, last + planned + END_WAIT_S)
        for i, run in zip(sorted(ok), runs, strict=True):
            if run is None or run[1] is None:
                missing += 1
                continue
            on, off = run
            err = (off.t - on.t) - planned
            errors.append(err)
            spans.append((abs(err), on.t + planned - STALL_LEAD_S, off.t))
            by_model.setdefault(clinic.devs[i].pid, []).append(err)
            causes[off.cause] += 1
            start_lag.append(on.t - ok[i][0])
            off_at[ok[i][1]] = off.t
            ends.append((clinic.devs[i].port, on.t, off.t))
            worst.append((abs(err), {"device": clinic.names[i], "error_ms": round(err * 1e3, 2),
                                     "port": clinic.devs[i].port, "on": on.t, "off": off.t}))
            worst.sort(key=lambda w: -w[0])
            del worst[5:]
        time.sleep(0.3)     # the service looks at each device once its session has ended
    stalls = clinic.farm.stalls()
    for _, w in worst:
        # A simulator stall from just before the planned end to the device's off.
        w["sim_stall_ms_inside"] = stall_inside(stalls, w["on"] + planned - STALL_LEAD_S,
                                                w["off"])
    out = _load_report(clinic, load, meter, canary, cpu0, off_at, t0)
    abs_ms = summary([abs(e) for e in errors], 1e3)
    target = STOP_ERROR_TARGET_MS.get(n)
    return {"sessions": n, "rounds": rounds, "planned_s": planned,
            "abs_error_ms": abs_ms, "error_ms": summary(errors, 1e3),
            "abs_error_ms_without_sim_stall": summary(without_stalls(spans, stalls), 1e3),
            "by_model_abs_error_ms": {m: summary([abs(e) for e in v], 1e3)
                                      for m, v in sorted(by_model.items())},
            "start_request_to_on_ms": summary(start_lag, 1e3),
            "device_stop_causes": dict(causes), "refused": dict(refused), "missing": missing,
            "worst": [w for _, w in worst], "ends": ends,
            "simulator_stalls": {"count": len(stalls),
                                 "max_ms": round(max((x for _, x in stalls), default=0.0)
                                                 * 1e3, 1)},
            "target_p99_ms": target,
            "target_met": None if target is None or not errors else abs_ms["p99"] <= target,
            **out}


def _stop_one(clinic: Clinic, sid: str, emergency: bool, at: float,
              out: dict[str, tuple[float, float, int, str]]) -> None:
    client = clinic.http()
    try:
        time.sleep(max(0.0, at - PRECONNECT_S - time.monotonic()))
        client.connect()
        time.sleep(max(0.0, at - time.monotonic()))
        sent = time.monotonic()
        client.send("POST", f"/api/sessions/{sid}/{'estop' if emergency else 'stop'}")
        status, body = client.receive()
        out[sid] = (sent, time.monotonic(), status, str(body.get("outcome", body.get("note"))))
    except (OSError, http.client.HTTPException) as exc:
        out[sid] = (time.monotonic(), time.monotonic(), 0, f"{type(exc).__name__}: {exc}")
    finally:
        client.close()


def operator_level(clinic: Clinic, load: LoadGen | None, n: int, rounds: int, stagger: float,
                   window: tuple[float, float], rng: random.Random, t0: float
                   ) -> dict[str, Any]:
    lat: dict[str, list[float]] = {"operator": [], "estop": []}
    to_cmd: dict[str, list[float]] = {"operator": [], "estop": []}
    by_model: dict[str, list[float]] = {}
    answer: list[float] = []
    answers: Counter[str] = Counter()
    early: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    causes: Counter[str] = Counter()
    missing = 0
    worst: list[tuple[float, dict[str, Any]]] = []
    sent_at: dict[str, float] = {}
    stops: list[tuple[str, float, float]] = []       # (session id, sent, device off)
    spans: list[tuple[float, float, float]] = []     # (to command, sent, off)
    if load:
        load.take()
    meter, canary = LoadMeter(), Canary()
    cpu0 = _cpus(clinic, load)
    clinic.farm.stalls()
    for rnd in range(rounds):
        idx = _devices(clinic, n, rnd)
        ok = _started(start_all(clinic, idx, LONG_S,
                                [rng.uniform(0.0, stagger) for _ in idx]), refused)
        base = time.monotonic()
        plan = {i: (base + rng.uniform(*window), rng.random() < 0.5) for i in ok}
        got: dict[str, tuple[float, float, int, str]] = {}
        threads = [threading.Thread(target=_stop_one, args=(clinic, ok[i][1], e, at, got))
                   for i, (at, e) in plan.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        runs = _wait_off(clinic, ok, time.monotonic() + END_WAIT_S)
        if any(r is not None and r[1] is None for r in runs):
            # A stop that did not stop: counted as missing; the room's e-stop clears the way.
            clinic.http().call("POST", "/api/estop")
        for i, run in zip(sorted(ok), runs, strict=True):
            sid = ok[i][1]
            emergency = plan[i][1]
            kind = "estop" if emergency else "operator"
            if run is None or run[1] is None or sid not in got:
                missing += 1
                continue
            off = run[1]
            sent, replied, status, outcome = got[sid]
            sent_at[sid] = sent
            answers[f"{status} {outcome}"] += 1
            answer.append(replied - sent)
            causes[f"{kind}:{off.cause}"] += 1
            if off.t < sent:
                # Off before the stop was sent (the device's watchdog, a fault): no latency.
                early[off.cause] += 1
                continue
            latency = off.t - sent
            pid = clinic.devs[i].pid
            ramp = CONTROLLED_RAMP_DOWN_S if (pid == "es-4" and not emergency
                                              and off.cause == "stop") else 0.0
            lat[kind].append(latency)
            to_cmd[kind].append(latency - ramp)
            spans.append((latency - ramp, sent, off.t))
            stops.append((sid, sent, off.t - ramp))
            by_model.setdefault(f"{pid}:{kind}", []).append(latency)
            worst.append((latency - ramp, {"device": clinic.names[i], "kind": kind,
                                           "sent": sent, "off": off.t,
                                           "to_off_ms": round(latency * 1e3, 2),
                                           "ramp_ms": ramp * 1e3, "answer": status,
                                           "answer_ms": round((replied - sent) * 1e3, 2)}))
            worst.sort(key=lambda w: -w[0])
            del worst[5:]
        time.sleep(0.3)
    stalls = clinic.farm.stalls()
    for _, w in worst:
        w["sim_stall_ms_inside"] = stall_inside(stalls, w["sent"], w["off"])
    out = _load_report(clinic, load, meter, canary, cpu0, sent_at, t0)
    stats = {k: summary(v, 1e3) for k, v in lat.items()}
    cmd = {k: summary(v, 1e3) for k, v in to_cmd.items()}
    met = all(cmd[k].get("n") and cmd[k]["p99"] <= OPERATOR_TARGET_MS for k in cmd) \
        and not early
    return {"sessions": n, "rounds": rounds, "to_output_off_ms": stats,
            "to_stop_command_ms": cmd,
            "to_stop_command_ms_without_sim_stall": summary(without_stalls(spans, stalls), 1e3),
            "by_model_to_output_off_ms": {k: summary(v, 1e3) for k, v in
                                          sorted(by_model.items())},
            "http_answer_ms": summary(answer, 1e3), "http_answers": dict(answers),
            "worst": [w for _, w in worst], "device_stop_causes": dict(causes),
            "off_before_request": dict(early),
            "refused": dict(refused), "missing": missing, "stops": stops,
            "simulator_stalls": {"count": len(stalls),
                                 "max_ms": round(max((x for _, x in stalls), default=0.0)
                                                 * 1e3, 1)},
            "target_p99_ms": OPERATOR_TARGET_MS, "target_met": bool(met), **out}


def _cpus(clinic: Clinic, load: LoadGen | None) -> tuple[float, float, float]:
    return (clinic.service_cpu_s(), clinic.farm.cpu_s(),
            proc_cpu_s(load.pid if load else None))


def _load_report(clinic: Clinic, load: LoadGen | None, meter: LoadMeter, canary: Canary,
                 cpu0: tuple[float, float, float], t_ref: dict[str, float], t0: float
                 ) -> dict[str, Any]:
    svc, sim, gen = (b - a for a, b in zip(cpu0, _cpus(clinic, load), strict=True))
    machine = meter.report(extra_busy_s=svc + sim + gen)
    wall = machine["wall_s"] or 1.0
    machine.update(service_cores=round(svc / wall, 3), simulator_cores=round(sim / wall, 3),
                   loadgen_cores=round(gen / wall, 3), bench_cores=machine.pop(
                       "controller_cores"), service_threads=clinic.service_threads(),
                   canary=canary.stop())
    machine["simulator_tick_late_ms"] = summary(clinic.farm.tick_lateness(), 1e3)
    clients = clients_summary(load.take(), wall, t_ref, t0) if load else {}
    return {"load": machine, "clients": clients, "window": [meter.t0, time.monotonic()],
            "service_log": clinic.warnings_since(meter.t0)[:20]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="1,32", help="concurrent sessions, comma separated")
    ap.add_argument("--devices", type=int, default=0,
                    help="devices the service holds (default: the largest level)")
    ap.add_argument("--planned", type=float, default=3.0, help="stop-error sessions' seconds")
    ap.add_argument("--samples", type=int, default=40,
                    help="sessions per level and measurement at least (rounds = samples/level)")
    ap.add_argument("--min-rounds", type=int, default=3)
    ap.add_argument("--stagger", type=float, default=1.0,
                    help="sessions start at random moments within this many seconds")
    ap.add_argument("--window", default="0.5,2.5",
                    help="stops come at random moments this many seconds after all started")
    ap.add_argument("--clients", type=int, default=sum(CLIENT_MIX.values()),
                    help="live-stream clients (one paused, one slow, one stalled, the rest "
                    "reading)")
    ap.add_argument("--flood", type=int, default=4,
                    help="connections sending GET requests back to back")
    ap.add_argument("--flood-rate", type=float, default=0.0,
                    help="GET requests a second, all flood connections together (default 0: "
                    "each sends the next as soon as the last is answered)")
    ap.add_argument("--probe", action="store_true",
                    help="run the service under bench/serve_probe.py (GIL probe, garbage "
                    "collections)")
    ap.add_argument("--service-switchinterval", type=float, default=None,
                    help="sys.setswitchinterval for the service (implies --probe)")
    ap.add_argument("--experiment-async-stop", action="store_true",
                    help="EXPERIMENT, not the shipped service: stop/e-stop routes that post "
                    "the stop on the event loop (serve_probe.py; implies --probe)")
    ap.add_argument("--sim-procs", type=int, default=2)
    ap.add_argument("--only", choices=("stop_error", "operator"), default=None)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--quick", action="store_true", help="under a minute")
    args = ap.parse_args(argv)
    if args.quick:
        args.planned, args.samples, args.min_rounds, args.window = 1.5, 4, 1, "0.3,1.0"
    try:
        levels = [int(x) for x in args.levels.split(",") if x.strip()]
        lo, hi = (float(x) for x in args.window.split(","))
    except ValueError:
        raise SystemExit("--levels: comma-separated integers; --window: two seconds 'LO,HI'") \
            from None
    if not levels or min(levels) < 1 or args.clients < 0 or args.flood < 0:
        raise SystemExit("--levels needs positive integers; --clients and --flood >= 0")
    devices = max(args.devices, *levels)
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    clinic = Clinic.open(models_for(devices), args.sim_procs, args.probe,
                         args.service_switchinterval, args.experiment_async_stop)
    results: dict[str, list[dict[str, Any]]] = {"stop_error": [], "operator": []}
    load = None
    final: dict[str, Any] = {}
    try:
        if args.clients or args.flood:
            load = LoadGen(clinic.base, clinic.token, client_mix(args.clients), args.flood,
                           args.flood_rate, clinic.names)
        for n in levels:
            rounds = max(args.min_rounds, -(-args.samples // n))
            if args.only in (None, "stop_error"):
                res = stop_error_level(clinic, load, n, args.planned, rounds, args.stagger,
                                       rng, t0)
                results["stop_error"].append(res)
                print(f"# {n} sessions: |stop error| {fmt_ms(res['abs_error_ms'])}; "
                      f"service {res['load']['service_cores']} cores, machine "
                      f"{res['load']['machine_busy_cores']}", file=sys.stderr, flush=True)
            if args.only in (None, "operator"):
                res = operator_level(clinic, load, n, rounds, args.stagger, (lo, hi), rng, t0)
                results["operator"].append(res)
                print(f"# {n} sessions: e-stop {fmt_ms(res['to_output_off_ms']['estop'])}; "
                      f"operator {fmt_ms(res['to_output_off_ms']['operator'])} to off, "
                      f"{fmt_ms(res['to_stop_command_ms']['operator'])} to command",
                      file=sys.stderr, flush=True)
    finally:
        if load is not None:
            final = clients_summary(load.close(), 1.0, {}, t0)
        drops = [round(t - t0, 1) for t, text in clinic.lines if "dropped" in text]
        code = clinic.close()
        for rs in results.values():
            for r in rs:
                probe_figures(clinic.probe, r)
    line = "; ".join(
        [f"{r['sessions']}x |err| p50 {r['abs_error_ms'].get('median')} p99 "
         f"{r['abs_error_ms'].get('p99')} max {r['abs_error_ms'].get('max')} ms"
         for r in results["stop_error"]] +
        [f"{r['sessions']}x e-stop p99 {r['to_output_off_ms']['estop'].get('p99')}, operator "
         f"p99 {r['to_output_off_ms']['operator'].get('p99')} to off "
         f"({r['to_stop_command_ms']['operator'].get('p99')} to command) ms"
         for r in results["operator"]])
    missed = [f"{k} {r['sessions']}x" for k, rs in results.items() for r in rs
              if r["target_met"] is False]
    line += f"; {args.clients} streams, {args.flood} GET flood; targets " + (
        "met" if not missed else "MISSED: " + ", ".join(missed))
    emit("service_load", {
        "config": {"levels": levels, "devices": devices, "planned_s": args.planned,
                   "samples": args.samples, "stagger_s": args.stagger, "window_s": [lo, hi],
                   "clients": client_mix(args.clients), "flood_connections": args.flood,
                   "flood_rate_per_s": args.flood_rate or "closed loop",
                   "probe": bool(clinic.probe),
                   "service_switchinterval_s": args.service_switchinterval,
                   "experiment_async_stop": args.experiment_async_stop,
                   "sim_procs": args.sim_procs, "seed": args.seed, "quick": args.quick,
                   "controlled_ramp_down_s": CONTROLLED_RAMP_DOWN_S,
                   "targets_ms": {"stop_error_p99": STOP_ERROR_TARGET_MS,
                                  "operator_stop_p99": OPERATOR_TARGET_MS}},
        "results": results,
        "stalled_and_slow_clients_at_end": final.get("sse", {}),
        "service_dropped_client_log_s": drops,
        "service_exit_status": code,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }, line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
