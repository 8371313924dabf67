"""Shared helpers for the benchmark scripts: statistics, machine facts, load, output.

Benchmarks are plain scripts (`python bench/NAME.py`), never part of the test run.
Each prints one JSON document and then a one-line summary.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import resource
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

# Concurrency levels of DESIGN.md §5 and issue 6.
LEVELS = (1, 8, 32, 64)
# Mixed device models, in this order, for multi-session runs.
MODELS = ("hc-200", "us-300", "es-4")
# Prescriptions every shipped device accepts (as tests/session_helpers.SETTINGS).
SETTINGS: dict[str, dict[str, str]] = {
    "hc-200": {"temperature_c": "40"},
    "us-300": {"frequency_mhz": "1", "intensity_w_cm2": "1.5", "duty_pct": "100"},
    "es-4": {"frequency_hz": "100", "pulse_width_us": "200", "amplitude_ma": "10"},
}

# The slow end of each manual: every reply comes this long after the request, a little
# inside the vendor's limit (/work/shared/specs: HC-200 "under 20 ms", US-300 "within
# 50 ms", ES-4 "within 20 ms"). Simulator fault option `delay_ms` (issue 10 item 1).
MANUAL_REPLY_MS = {"hc-200": 20.0, "us-300": 50.0, "es-4": 20.0}
SLOW_REPLY_MS = {"hc-200": 19.0, "us-300": 45.0, "es-4": 19.0}


def parse_reply_delay(text: str, slow: bool) -> dict[str, float]:
    """`--reply-delay MODEL=MS,...` over the `--slow` defaults (or over none). Raises
    SystemExit with one sentence naming the bad part."""
    delays = dict(SLOW_REPLY_MS) if slow else {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        model, sep, ms = part.partition("=")
        if not sep or model not in MODELS:
            raise SystemExit(f"--reply-delay: '{part}' is not MODEL=MS with MODEL one of "
                             f"{', '.join(MODELS)}")
        try:
            value = float(ms)
        except ValueError:
            raise SystemExit(f"--reply-delay: '{ms}' for {model} is not a number of ms") \
                from None
        if not 0.0 <= value < MANUAL_REPLY_MS[model]:
            raise SystemExit(f"--reply-delay: {model} {value} ms must be at least 0 and below its "
                             f"manual's {MANUAL_REPLY_MS[model]:g} ms")
        delays[model] = value
    return {m: d for m, d in delays.items() if d > 0}


def parse_seconds_list(text: str, flag: str) -> list[float]:
    """A comma-separated list of positive seconds, e.g. `--stop-after 1,20,45`."""
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: '{text}' is not a comma-separated list of seconds") \
            from None
    if not out or any(not (0 < x < 3600) for x in out):
        raise SystemExit(f"{flag}: '{text}' needs one or more seconds between 0 and 3600")
    return out


def faults_for(pid: str, delays: dict[str, float]) -> dict[str, float]:
    """The simulator fault options of one device: its reply delay, if any."""
    return {"delay_ms": delays[pid]} if pid in delays else {}


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), numpy's default method."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
    """n, min, median, p90, p99, max, mean; every figure multiplied by `scale`."""
    if not values:
        return {"n": 0}
    s = [v * scale for v in values]
    return {
        "n": len(s),
        "min": round(min(s), digits),
        "median": round(percentile(s, 50), digits),
        "p90": round(percentile(s, 90), digits),
        "p99": round(percentile(s, 99), digits),
        "max": round(max(s), digits),
        "mean": round(sum(s) / len(s), digits),
    }


def machine() -> dict[str, Any]:
    """The facts a figure needs to be read against."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "switchinterval_s": sys.getswitchinterval(),
    }


def loadavg() -> list[float]:
    with open("/proc/loadavg", encoding="ascii") as f:
        return [float(x) for x in f.read().split()[:3]]


def _cpu_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies of the whole machine from /proc/stat. Steal is time the
    hypervisor ran something else on our virtual CPUs: no priority inside the guest helps."""
    with open("/proc/stat", encoding="ascii") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    steal = parts[7] if len(parts) > 7 else 0
    return total - idle - steal, total, steal


@dataclass
class LoadMeter:
    """Machine and process CPU use over a measured stretch (others' tests run meanwhile)."""

    t0: float = field(default_factory=time.monotonic)
    ticks0: tuple[int, int, int] = field(default_factory=_cpu_ticks)
    self0: resource.struct_rusage = field(
        default_factory=lambda: resource.getrusage(resource.RUSAGE_SELF))
    children0: resource.struct_rusage = field(
        default_factory=lambda: resource.getrusage(resource.RUSAGE_CHILDREN))
    load_start: list[float] = field(default_factory=loadavg)

    def report(self, extra_busy_s: float = 0.0) -> dict[str, Any]:
        """`extra_busy_s`: CPU seconds of helper processes still alive (not yet in CHILDREN)."""
        wall = time.monotonic() - self.t0
        busy1, total1, steal1 = _cpu_ticks()
        busy = busy1 - self.ticks0[0]
        total = max(1, total1 - self.ticks0[1])
        steal = steal1 - self.ticks0[2]
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = (me.ru_utime - self.self0.ru_utime) + (me.ru_stime - self.self0.ru_stime)
        child = (kids.ru_utime - self.children0.ru_utime) + \
            (kids.ru_stime - self.children0.ru_stime) + extra_busy_s
        ncpu = os.cpu_count() or 1
        machine_busy = busy / total * ncpu            # cores in use, everyone together
        ours = (own + child) / wall if wall > 0 else 0.0
        return {
            "wall_s": round(wall, 2),
            "machine_busy_cores": round(machine_busy, 2),
            "controller_cores": round(own / wall, 3) if wall > 0 else 0.0,
            "simulator_cores": round(child / wall, 3) if wall > 0 else 0.0,
            "others_cores": round(max(0.0, machine_busy - ours), 2),
            "steal_pct": round(100.0 * steal / total, 2),
            "loadavg_start": self.load_start,
            "loadavg_end": loadavg(),
        }


def vm_rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def thread_count() -> int:
    return threading.active_count()


def emit(name: str, result: dict[str, Any], line: str) -> None:
    """The JSON document on stdout, then the one-line summary."""
    doc = {"benchmark": name, "machine": machine(), **result}
    print(json.dumps(doc, indent=2, sort_keys=False, default=_jsonable))
    print(f"SUMMARY {name}: {line}")
    sys.stdout.flush()


def _jsonable(value: object) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def fmt_ms(stats: dict[str, Any]) -> str:
    if not stats.get("n"):
        return "n=0"
    return f"p50 {stats['median']:.2f} p99 {stats['p99']:.2f} max {stats['max']:.2f} ms " \
           f"(n={stats['n']})"


def models_for(n: int, models: Iterable[str] = MODELS, offset: int = 0) -> list[str]:
    """n device models, cycling through the mix from `offset` (pass the round number, so
    that a single session is not always the same model)."""
    mix = list(models)
    return [mix[(i + offset) % len(mix)] for i in range(n)]


# -- machine noise ---------------------------------------------------------------------

CANARY_PERIOD_S = 0.005


def _canary(conn: Connection, period: float) -> None:
    late: list[float] = []
    while not conn.poll():
        t = time.monotonic()
        time.sleep(period)
        late.append(time.monotonic() - t - period)
    conn.recv()
    conn.send(late)


class Canary:
    """A separate process that sleeps `CANARY_PERIOD_S` over and over and records how late it
    wakes: how long the OS keeps a runnable process of this priority waiting (other helpers'
    tests share the machine). Its lateness is what no controller design can beat."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_canary, args=(child, CANARY_PERIOD_S), daemon=True)
        self._proc.start()
        child.close()

    def stop(self) -> dict[str, Any]:
        try:
            self._conn.send("stop")
            late: list[float] = self._conn.recv()
        except (OSError, EOFError):
            late = []
        self._proc.join(2.0)
        self._conn.close()
        return {"period_ms": CANARY_PERIOD_S * 1e3, "wake_late_ms": summary(late, 1e3)}


class LogCounter(logging.Handler):
    """Counts log records by level and logger (WARNING and up; INFO from protocols.*, where
    retries log), keeps the first errors' text; installed instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {record.name}"] += 1
        if record.levelno >= logging.ERROR and len(self.errors) < 20:
            self.errors.append(f"{record.name}: {record.getMessage()}")

    @classmethod
    def install(cls) -> LogCounter:
        counter = cls()
        root = logging.getLogger()
        root.addHandler(counter)
        root.setLevel(logging.WARNING)
        # Retries of the SCPI engine log at INFO: counted for the protocol engines only (an
        # INFO root would switch on transitions' per-transition logging, a cost of its own).
        logging.getLogger("protocols").setLevel(logging.INFO)
        return counter

    def take(self) -> dict[str, Any]:
        out = {"counts": dict(self.counts), "errors": list(self.errors)}
        self.counts.clear()
        self.errors.clear()
        return out


class GcPauses:
    """Every garbage collection in this process: (start, duration, generation). A full
    collection holds the GIL: every session thread waits for it."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []
        self.cpu: list[float] = []          # CPU seconds of each full (gen 2) collection
        self.collected: list[int] = []      # objects a full collection freed
        self._t0 = self._c0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0, self._c0 = time.monotonic(), time.thread_time()
        else:
            self.pauses.append((self._t0, time.monotonic() - self._t0, info["generation"]))
            if info["generation"] == 2:
                self.cpu.append(time.thread_time() - self._c0)
                self.collected.append(info.get("collected", 0))

    def overlapping(self, t0: float, t1: float) -> float:
        """Seconds of collection inside [t0, t1]."""
        return sum(max(0.0, min(t1, s + d) - max(t0, s)) for s, d, _ in self.pauses)

    def take(self) -> dict[str, Any]:
        by_gen = {g: [d for _, d, gen in self.pauses if gen == g] for g in (0, 1, 2)}
        out: dict[str, Any] = {f"gen{g}": summary(v, 1e3) for g, v in by_gen.items()}
        out["gen2_cpu_ms"] = [round(c * 1e3, 1) for c in self.cpu]
        out["gen2_collected"] = list(self.collected)
        self.pauses.clear()
        self.cpu.clear()
        self.collected.clear()
        return out

    def close(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
