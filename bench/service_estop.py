"""The room's e-stop through the clinic service: one POST /api/estop, every output off.

`modctl serve` holds K simulated devices (simulators out of process, simfarm.ProcessFarm),
all delivering (sessions started over the API); one POST /api/estop is sent at a random
moment; for each device, latency = its output off (its own history) minus the moment just
before the request was sent. Repeated `--repeats` times per device count. The target (issue
12): p99 <= 50 ms at the device. Figures: every device's latency (p50/p99/max), the last
device's per request, and the HTTP answer's time. By default the same load as
service_load.py runs meanwhile (20 live-stream clients, a closed-loop GET flood).

    python bench/service_estop.py                  # 8, 16, 32 devices, 20 requests each
    python bench/service_estop.py --quick          # under a minute
    python bench/service_estop.py --clients 0 --flood 0    # a quiet service
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from typing import Any

from clinic import Clinic, proc_cpu_s, run_after, stall_inside, start_all, without_stalls
from common import Canary, LoadMeter, emit, fmt_ms, models_for, summary
from loadgen import LoadGen, client_mix, clients_summary
from serve_probe import probe_window
from service_load import PRECONNECT_S

TARGET_MS = 50.0       # issue 12: e-stop through the API -> every output off, p99
LONG_S = 60.0          # sessions' planned time: never reached, the e-stop ends them
END_WAIT_S = 10.0


def run_level(clinic: Clinic, load: LoadGen | None, k: int, repeats: int, stagger: float,
              settle: tuple[float, float], rng: random.Random, t0: float) -> dict[str, Any]:
    lat: list[float] = []
    last: list[float] = []
    answer: list[float] = []
    by_model: dict[str, list[float]] = {}
    refused: Counter[str] = Counter()
    causes: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    early: Counter[str] = Counter()
    missing = 0
    idx = list(range(k))
    if load:
        load.take()
    meter, canary = LoadMeter(), Canary()
    cpu0 = (clinic.service_cpu_s(), clinic.farm.cpu_s(), proc_cpu_s(load.pid if load else None))
    final_at: dict[str, float] = {}
    requests: list[tuple[float, float]] = []        # (sent, the last device's off)
    spans: list[tuple[float, float, float]] = []    # (latency, sent, off) per device
    clinic.farm.stalls()
    t_level = time.monotonic()
    for _ in range(repeats):
        starts = start_all(clinic, idx, LONG_S, [rng.uniform(0.0, stagger) for _ in idx])
        ok = {}
        for i, (sent, status, body) in starts.items():
            if status == 201 and body.get("id"):
                ok[i] = sent
            else:
                refused[f"{status}: {str(body.get('error', body))[:120]}"] += 1
        client = clinic.http()
        time.sleep(rng.uniform(*settle) - PRECONNECT_S)
        client.connect()
        time.sleep(PRECONNECT_S)
        sent = time.monotonic()
        client.send("POST", "/api/estop")
        status, body = client.receive()
        answer.append(time.monotonic() - sent)
        client.close()
        for s in body.get("stopped", []):
            outcomes[f"{status} {s.get('outcome')} confirmed={s.get('stop_confirmed')}"] += 1
            final_at[str(s.get("id"))] = sent
        deadline = time.monotonic() + END_WAIT_S
        while True:
            runs = [run_after(h, ok[i]) for i, h in zip(sorted(ok),
                                                        clinic.histories(sorted(ok)),
                                                        strict=True)]
            if all(r is None or r[1] is not None for r in runs) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        this = []
        for i, run in zip(sorted(ok), runs, strict=True):
            if run is None or run[1] is None:
                missing += 1
                continue
            off = run[1]
            causes[off.cause] += 1
            if off.t < sent:
                # Off before the e-stop was sent (the device's own watchdog, a fault): not
                # a stop latency; counted, with its cause, under `off_before_request`.
                early[off.cause] += 1
                continue
            lat.append(off.t - sent)
            spans.append((off.t - sent, sent, off.t))
            this.append(off.t - sent)
            by_model.setdefault(clinic.devs[i].pid, []).append(off.t - sent)
        if this:
            last.append(max(this))
            requests.append((sent, sent + max(this)))
        time.sleep(0.5)     # the service looks at each device once its session has ended
    svc, sim, gen = (b - a for a, b in zip(cpu0, (clinic.service_cpu_s(), clinic.farm.cpu_s(),
                                                  proc_cpu_s(load.pid if load else None)),
                                           strict=True))
    machine = meter.report(extra_busy_s=svc + sim + gen)
    wall = machine["wall_s"] or 1.0
    machine.update(service_cores=round(svc / wall, 3), simulator_cores=round(sim / wall, 3),
                   loadgen_cores=round(gen / wall, 3),
                   bench_cores=machine.pop("controller_cores"), canary=canary.stop())
    stats = summary(lat, 1e3)
    stalls = clinic.farm.stalls()
    slowest = sorted(requests, key=lambda r: r[0] - r[1])[:3]
    return {"devices": k, "repeats": repeats, "to_output_off_ms": stats,
            "to_output_off_ms_without_sim_stall": summary(without_stalls(spans, stalls), 1e3),
            "simulator_stalls": {"count": len(stalls),
                                 "max_ms": round(max((x for _, x in stalls), default=0.0)
                                                 * 1e3, 1)},
            "last_device_ms": summary(last, 1e3), "http_answer_ms": summary(answer, 1e3),
            "by_model_ms": {m: summary(v, 1e3) for m, v in sorted(by_model.items())},
            "answers": dict(outcomes), "device_stop_causes": dict(causes),
            "off_before_request": dict(early),
            "refused": dict(refused), "missing": missing, "target_p99_ms": TARGET_MS,
            "target_met": bool(stats.get("n")) and stats["p99"] <= TARGET_MS and not missing
            and not early,
            "load": machine,
            # The three slowest requests: (sent, last off), the longest simulator stall in
            # them; serve_probe.py (`--probe`) adds the collections and the GIL probe.
            "window": [t_level, time.monotonic()],
            "slowest": [{"sent": a, "off": b, "last_device_ms": round((b - a) * 1e3, 2),
                         "sim_stall_ms_inside": stall_inside(stalls, a, b)}
                        for a, b in slowest],
            "clients": clients_summary(load.take(), wall, final_at, t0) if load else {},
            "service_log": clinic.warnings_since(meter.t0)[:20]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="8,16,32", help="device counts, comma separated")
    ap.add_argument("--repeats", type=int, default=20, help="e-stop requests per count")
    ap.add_argument("--stagger", type=float, default=1.0,
                    help="sessions start at random moments within this many seconds")
    ap.add_argument("--settle", default="0.5,1.5",
                    help="the e-stop comes this many seconds (random) after all started")
    ap.add_argument("--clients", type=int, default=20, help="live-stream clients")
    ap.add_argument("--flood", type=int, default=4, help="GET flood connections")
    ap.add_argument("--flood-rate", type=float, default=0.0,
                    help="GET requests a second in all (default 0: closed loop)")
    ap.add_argument("--probe", action="store_true",
                    help="run the service under bench/serve_probe.py (GIL probe, garbage "
                    "collections)")
    ap.add_argument("--sim-procs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--quick", action="store_true", help="under a minute")
    args = ap.parse_args(argv)
    if args.quick:
        args.devices, args.repeats = "8,32", 3
    try:
        counts = [int(x) for x in args.devices.split(",") if x.strip()]
        lo, hi = (float(x) for x in args.settle.split(","))
    except ValueError:
        raise SystemExit("--devices: comma-separated integers; --settle: two seconds "
                         "'LO,HI'") from None
    if not counts or min(counts) < 1 or args.repeats < 1 or not PRECONNECT_S <= lo <= hi:
        raise SystemExit(f"--devices and --repeats need positive integers; --settle LO,HI "
                         f"with {PRECONNECT_S} <= LO <= HI")
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    clinic = Clinic.open(models_for(max(counts)), args.sim_procs, args.probe)
    results = []
    load = None
    try:
        if args.clients or args.flood:
            load = LoadGen(clinic.base, clinic.token, client_mix(args.clients), args.flood,
                           args.flood_rate, clinic.names)
        for k in counts:
            res = run_level(clinic, load, k, args.repeats, args.stagger, (lo, hi), rng, t0)
            results.append(res)
            print(f"# {k} devices: e-stop -> off {fmt_ms(res['to_output_off_ms'])}; last "
                  f"device {fmt_ms(res['last_device_ms'])}; answer "
                  f"{fmt_ms(res['http_answer_ms'])}", file=sys.stderr, flush=True)
    finally:
        if load is not None:
            load.close()
        code = clinic.close()
        for r in results:
            a0, b0 = r.pop("window")
            if clinic.probe:
                # Full collections in the level: (seconds into it, ms), and the GIL probe.
                r["service_gc_gen2"] = [(round(t - a0, 1), round(d * 1e3, 1))
                                        for t, d, g in clinic.probe["gc"]
                                        if g == 2 and a0 <= t <= b0]
                r["service_gc_tracked_objects"] = [(round(t - a0, 1), n) for t, n in
                                                   clinic.probe.get("gc_tracked", [])
                                                   if a0 <= t <= b0]
                # CPU of each full collection (in order; wall time minus this is the time
                # the OS gave the CPU to others meanwhile).
                full = [(t, d) for t, d, g in clinic.probe["gc"] if g == 2]
                cpu = clinic.probe.get("gc_gen2_cpu", [])
                r["service_gc_gen2_wall_cpu_ms"] = [
                    (round(t - a0, 1), round(d * 1e3, 1), round(c * 1e3, 1))
                    for (t, d), c in zip(full, cpu, strict=False) if a0 <= t <= b0]
                r["service_gil_probe_late_ms"] = summary(
                    [x for t, x in clinic.probe["gil_late"] if a0 <= t <= b0], 1e3)
            for w in r["slowest"]:
                a, b = w.pop("sent"), w.pop("off")
                if clinic.probe:
                    w.update(probe_window(clinic.probe, a, b))
    line = "; ".join(f"{r['devices']} devices p50 {r['to_output_off_ms'].get('median')} p99 "
                     f"{r['to_output_off_ms'].get('p99')} max {r['to_output_off_ms'].get('max')}"
                     " ms" for r in results)
    missed = [str(r["devices"]) for r in results if not r["target_met"]]
    line += f"; {args.clients} streams, {args.flood} GET flood; target p99 {TARGET_MS:g} ms " + (
        "met" if not missed else f"MISSED at {', '.join(missed)} devices")
    emit("service_estop", {
        "config": {"devices": counts, "repeats": args.repeats, "stagger_s": args.stagger,
                   "settle_s": [lo, hi], "clients": client_mix(args.clients),
                   "flood_connections": args.flood,
                   "flood_rate_per_s": args.flood_rate or "closed loop",
                   "sim_procs": args.sim_procs, "seed": args.seed, "quick": args.quick,
                   "probe": bool(clinic.probe), "target_p99_ms": TARGET_MS},
        "results": results, "service_exit_status": code,
        "elapsed_s": round(time.monotonic() - t0, 1)}, line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
