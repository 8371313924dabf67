"""Soak: 16 simulated devices through back-to-back sessions with random faults.

Each of `--devices` slots (mixed models) runs sessions one after another for
`--minutes`: a fresh simulated device per session (a FaultPlan is fixed when a
device is made), in a separate simulator process, with one random fault that
applies to its modality (simulator/faults.py) or none, and sometimes an
operator stop or e-stop. All sessions write one records database, as a
controller process does.

After each session the device's own history must end with its output off:
immediately when the controller confirmed the stop, else within the device
watchdog (the backstop for a silent or unplugged link). At the end: sessions
run, outcomes, faults injected, outputs left running, threads and file
descriptors compared with before (after the records store is closed), memory
growth (VmRSS after the warm-up minute against the end). Exit status 1 if
anything leaked, any output was left running or any session hung.

    python bench/soak.py                 # 30 minutes
    python bench/soak.py --minutes 5
    python bench/soak.py --quick         # 1 minute
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import threading
import time
import tracemalloc
from collections import Counter
from typing import Any

from common import (
    LoadMeter,
    LogCounter,
    emit,
    fd_count,
    models_for,
    summary,
    thread_count,
    vm_rss_kib,
)
from runner import make_session, profile, records
from simfarm import Dev, ProcessFarm, output_left_on

from controller.records.store import RecordStore
from controller.session.gc_policy import POLICY
from simulator.faults import LINK_FAULTS, MODALITY_FAULTS

# Link faults worth injecting ("seed" only seeds garbling).
LINK = ("silent_at", "disconnect_at", "garble", "delay_ms")
P_NO_FAULT = 0.2
P_OPERATOR_STOP = 0.1
# The device's watchdog (at most 2 s) stops an output the controller could not; allow for it.
BACKSTOP_WAIT_S = 3.5


def pick_fault(modality: str, duration: float, rng: random.Random) -> dict[str, Any]:
    if rng.random() < P_NO_FAULT:
        return {}
    names = sorted(set(LINK) | MODALITY_FAULTS[modality])
    assert set(LINK) <= LINK_FAULTS
    name = rng.choice(names)
    at = round(rng.uniform(0.1, duration * 0.9), 3)
    if name == "garble":
        return {"garble": round(rng.uniform(0.02, 0.3), 3), "seed": rng.randrange(1 << 16)}
    if name == "delay_ms":
        return {"delay_ms": round(rng.uniform(5.0, 120.0), 1)}   # past the reply timeout too
    if name == "contact_lost":
        return {"contact_lost": (at, round(at + rng.uniform(0.2, 1.5), 3))}
    if name == "no_applicator":
        return {"no_applicator": True}
    if name == "miscal_gain":
        return {"miscal_gain": round(rng.uniform(0.5, 2.0), 3)}
    if name == "miscal_offset":
        return {"miscal_offset": round(rng.uniform(-3.0, 3.0), 2)}
    return {name: at}


class Totals:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sessions = 0
        self.outcomes: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.fault_outcomes: Counter[str] = Counter()
        self.stops: Counter[str] = Counter()
        self.stop_sources: Counter[str] = Counter()
        self.stop_unconfirmed = 0
        self.device_backstop = 0          # off only after the controller gave up (watchdog)
        self.left_running: list[dict[str, Any]] = []
        self.hung: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.session_s: list[float] = []


def slot(index: int, pid: str, farm: ProcessFarm, store: RecordStore | None, until: float,
         rng: random.Random, totals: Totals, min_s: float, max_s: float) -> None:
    modality = profile(pid).modality
    while time.monotonic() < until:
        duration = round(rng.uniform(min_s, max_s), 2)
        faults = pick_fault(modality, duration, rng)
        stop = None
        if rng.random() < P_OPERATOR_STOP:
            stop = ("estop" if rng.random() < 0.5 else "operator",
                    rng.uniform(0.2, duration * 0.8))
        dev: Dev | None = None
        t0 = time.monotonic()
        try:
            (dev,) = farm.create_many([(pid, faults)])
            session = make_session(dev, duration, store, patient=f"soak-{index}")
            session.start()
            if stop is not None:
                time.sleep(stop[1])
                session.request_stop("operator", emergency=stop[0] == "estop",
                                     reason=f"soak {stop[0]}")
            report = session.wait(duration + 30.0)
            if report is None:
                with totals.lock:
                    totals.hung.append({"slot": index, "profile": pid, "faults": faults})
                session.request_stop("operator", emergency=True, reason="soak: hung")
                session.wait(10.0)
                report = session.report
            # The device's own truth: its output must end off (at once, or by its watchdog).
            deadline = time.monotonic() + BACKSTOP_WAIT_S
            (hist,) = farm.history([dev])
            waited = False
            while output_left_on(hist) and time.monotonic() < deadline:
                waited = True
                time.sleep(0.05)
                (hist,) = farm.history([dev])
            (hist,) = farm.release([dev])
            dev = None
            with totals.lock:
                totals.sessions += 1
                totals.by_model[pid] += 1
                outcome = report.outcome if report else "no report"
                totals.outcomes[outcome] += 1
                names = sorted(k for k in faults if k != "seed") or ["none"]
                for name in names:
                    totals.faults[name] += 1
                    totals.fault_outcomes[f"{name} -> {outcome}"] += 1
                totals.stops[stop[0] if stop else "none"] += 1
                if report is not None:
                    totals.stop_sources[report.stop_source or "-"] += 1
                    if report.stop_confirmed is False:
                        totals.stop_unconfirmed += 1
                if waited:
                    totals.device_backstop += 1
                if output_left_on(hist):
                    totals.left_running.append({"slot": index, "profile": pid,
                                                "faults": faults, "outcome": outcome,
                                                "last": repr(hist[-1])})
                totals.session_s.append(time.monotonic() - t0)
        except Exception as exc:       # counted and reported; the slot goes on
            with totals.lock:
                totals.errors.append(f"slot {index} {pid} {faults}: "
                                     f"{type(exc).__name__}: {exc}")
            if dev is not None:
                try:
                    (hist,) = farm.release([dev])
                    if output_left_on(hist):
                        with totals.lock:
                            totals.left_running.append({"slot": index, "profile": pid,
                                                        "faults": faults, "outcome": "error"})
                except Exception as exc2:
                    with totals.lock:
                        totals.errors.append(f"release: {exc2}")
            time.sleep(0.5)


def run_phase(farm: ProcessFarm, store: RecordStore | None, seconds: float, devices: int,
              rng: random.Random, totals: Totals, min_s: float, max_s: float) -> None:
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=slot, name=f"soak slot {i}",
                                args=(i, pid, farm, store, until, random.Random(rng.random()),
                                      totals, min_s, max_s))
               for i, pid in enumerate(models_for(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--devices", type=int, default=16)
    ap.add_argument("--min-session", type=float, default=1.5)
    ap.add_argument("--max-session", type=float, default=6.0)
    ap.add_argument("--warmup", type=float, default=30.0,
                    help="seconds of sessions before the memory baseline is taken")
    ap.add_argument("--sim-procs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--no-records", action="store_true",
                    help="sessions without a records database (to tell its share apart)")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="report where memory grew between the warm-up and the end")
    ap.add_argument("--quick", action="store_true", help="1 minute (10 s warm-up)")
    args = ap.parse_args(argv)
    if args.quick:
        args.minutes, args.warmup = 1.0, 10.0
    # Retries and faults log warnings by design: counted, not printed.
    counter = LogCounter.install()
    if args.tracemalloc:
        tracemalloc.start(8)
    snap0 = None
    rng = random.Random(args.seed)
    farm = ProcessFarm(args.sim_procs)
    meter = LoadMeter()
    cpu0 = farm.cpu_s()
    for pid in models_for(3):     # profiles parsed once, outside the comparison
        profile(pid)
    POLICY.install()              # its one thread per process is not a per-session leak
    gc.collect()
    threads_before, fds_before, rss_start = thread_count(), fd_count(), vm_rss_kib()
    totals = Totals()
    rss_samples: list[tuple[float, int]] = []
    try:
        with records(not args.no_records) as store:
            t0 = time.monotonic()
            run_phase(farm, store, args.warmup, args.devices, rng, totals,
                      args.min_session, args.max_session)
            gc.collect()
            rss_base = vm_rss_kib()
            rss_samples.append((time.monotonic() - t0, rss_base))
            if args.tracemalloc:
                snap0 = tracemalloc.take_snapshot()
            remaining = max(0.0, args.minutes * 60 - args.warmup)
            while remaining > 0:
                chunk = min(60.0, remaining)
                run_phase(farm, store, chunk, args.devices, rng, totals,
                          args.min_session, args.max_session)
                remaining -= chunk
                gc.collect()
                rss_samples.append((time.monotonic() - t0, vm_rss_kib()))
                print(f"# {rss_samples[-1][0]:.0f} s: {totals.sessions} sessions, "
                      f"RSS {rss_samples[-1][1] / 1024:.1f} MiB, threads "
                      f"{thread_count()}, fds {fd_count()}", file=sys.stderr, flush=True)
            fds_open_store = fd_count()
            elapsed = time.monotonic() - t0
            growth_sites: list[str] = []
            if snap0 is not None:
                gc.collect()
                stats = tracemalloc.take_snapshot().compare_to(snap0, "traceback")
                for st in stats[:8]:
                    growth_sites.append(f"{st.size_diff / 1024:+.1f} KiB in {st.count_diff:+d} "
                                        f"blocks: " + " <- ".join(
                                            f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}"
                                            for f in list(st.traceback)[:6]))
        gc.collect()
        time.sleep(0.2)
        threads_after, fds_after, rss_end = thread_count(), fd_count(), vm_rss_kib()
        sim_cpu = farm.cpu_s() - cpu0
    finally:
        farm.close()
    load = meter.report(extra_busy_s=0.0)
    load["simulator_cores"] = round(sim_cpu / max(1e-9, load["wall_s"]), 3)
    leaked_threads = threads_after - threads_before
    leaked_fds = fds_after - fds_before
    growth_kib = rss_end - rss_base
    ok = (not totals.left_running and not totals.hung and leaked_threads <= 0
          and leaked_fds <= 0 and not totals.errors)
    result = {
        "config": {"minutes": args.minutes, "devices": args.devices,
                   "session_s": [args.min_session, args.max_session], "warmup_s": args.warmup,
                   "p_no_fault": P_NO_FAULT, "p_operator_stop": P_OPERATOR_STOP,
                   "sim_procs": args.sim_procs, "seed": args.seed, "quick": args.quick,
                   "records": not args.no_records},
        "elapsed_s": round(elapsed, 1),
        "sessions_run": totals.sessions,
        "sessions_by_model": dict(totals.by_model),
        "outcomes": dict(totals.outcomes),
        "faults_injected": dict(totals.faults),
        "fault_outcomes": dict(sorted(totals.fault_outcomes.items())),
        "operator_stops": dict(totals.stops),
        "stop_sources": dict(totals.stop_sources),
        "stop_not_confirmed": totals.stop_unconfirmed,
        "stopped_by_device_backstop_after_session": totals.device_backstop,
        "outputs_left_running": len(totals.left_running),
        "left_running": totals.left_running[:20],
        "hung_sessions": totals.hung[:20],
        "errors": totals.errors[:20],
        "session_wall_s": summary(totals.session_s, 1.0, 2),
        "threads": {"before": threads_before, "after": threads_after,
                    "leaked": leaked_threads},
        "fds": {"before": fds_before, "with_store_open_at_end": fds_open_store,
                "after_store_closed": fds_after, "leaked": leaked_fds},
        "memory": {"rss_start_mib": round(rss_start / 1024, 1),
                   "rss_after_warmup_mib": round(rss_base / 1024, 1),
                   "rss_end_mib": round(rss_end / 1024, 1),
                   "growth_after_warmup_kib": growth_kib,
                   "growth_per_1000_sessions_kib": round(
                       growth_kib / max(1, totals.sessions) * 1000, 1),
                   "samples_s_kib": rss_samples},
        "log_records": dict(counter.counts),
        "log_errors": counter.errors,
        "memory_growth_sites": growth_sites,
        "passed": ok,
        "load": load,
    }
    line = (f"{totals.sessions} sessions in {elapsed / 60:.1f} min, outcomes "
            f"{dict(totals.outcomes)}, {sum(v for k, v in totals.faults.items() if k != 'none')}"
            f" faults injected, outputs left running {len(totals.left_running)}, threads "
            f"leaked {leaked_threads}, fds leaked {leaked_fds}, RSS growth {growth_kib} KiB, "
            f"hung {len(totals.hung)}, errors {len(totals.errors)}: "
            + ("PASS" if ok else "FAIL"))
    emit("soak", result, line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
