"""Simulated devices for benchmarks: in separate processes (default) or in this one.

A real deployment has each device's firmware on its own hardware. Running 64
simulator threads inside the controller process would make them compete with
the controller for its GIL and measure the simulator as much as the controller.
`ProcessFarm` serves many pseudo-terminals from a few worker processes instead:
each worker runs ONE thread with one `select` over all its devices' masters and
drives the simulator's own `PtyServer` objects (fault handling, reply queue and
garbling included) step by step, ticking every device every `TICK_S` like the
simulator's per-device thread does. Output histories (`model.history`, on
`time.monotonic()`, which is system-wide on Linux) come back over a pipe.

`InProcessFarm` is the same interface over `SimulatedDevice` threads in this
process, for the comparison figure.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import resource
import select
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from simulator.model_base import OutputChange

Spec = tuple[str, dict[str, Any]]     # (profile id, FaultPlan keyword arguments)
# A worker that runs a tick this late (or later) has stalled: its moment is kept (`stalls`),
# so that a late device answer can be laid beside it. Half the HC-200's and ES-4's manual
# reply limit (20 ms).
STALL_S = 0.010


@dataclass(frozen=True)
class Dev:
    key: int
    worker: int
    pid: str
    port: str


class Farm(Protocol):
    def create_many(self, specs: Sequence[Spec]) -> list[Dev]: ...

    def history(self, devs: Sequence[Dev]) -> list[list[OutputChange]]: ...

    def release(self, devs: Sequence[Dev]) -> list[list[OutputChange]]: ...

    def cpu_s(self) -> float: ...

    def tick_lateness(self) -> list[float]: ...

    def close(self) -> None: ...


# -- the worker process --------------------------------------------------------------

def _step(srv: Any, ready: bool, now: float) -> None:
    """One pass of simulator.pty_server.PtyServer._run for one device."""
    model = srv.endpoint.model
    if not srv.disconnected and model.fault_due(srv.faults.disconnect_at, now):
        srv.disconnected = True
        srv._close_fds()
    if srv.disconnected:
        srv.endpoint.tick(now)
        return
    silent = model.fault_due(srv.faults.silent_at, now)
    if ready:
        data = srv._read()
        if data and not silent:
            for reply in srv.endpoint.receive(data, now):
                srv._queue(reply, now)
    events = srv.endpoint.tick(now)
    if not silent:
        for frame in events:
            srv._queue(frame, now, garble=False)
    srv._flush(time.monotonic())


def _worker(conn: Connection, tick_s: float) -> None:
    # Imported here: the parent may not need them, the child always does.
    from controller.profiles.loader import resolve_profile
    from simulator.faults import FaultPlan
    from simulator.pty_server import PtyServer
    from simulator.server import build_endpoint, build_model

    profiles: dict[str, Any] = {}
    servers: dict[int, Any] = {}
    next_key = 0
    conn_fd = conn.fileno()
    next_tick = time.monotonic()
    # How late the worker got round to each due tick: the simulator's own stalls.
    late_ticks: list[float] = []
    # The long ones with their moment (due tick, lateness): a device answers late in them.
    stalls: list[tuple[float, float]] = []

    def create(pid: str, faults: dict[str, Any]) -> tuple[int, str]:
        nonlocal next_key
        profile = profiles.get(pid)
        if profile is None:
            profile = profiles[pid] = resolve_profile(pid).profile
        plan = FaultPlan(**faults)
        plan.check_applies(profile.modality)
        model = build_model(profile, plan)
        srv = PtyServer(build_endpoint(profile, model), plan)
        next_key += 1
        servers[next_key] = srv
        return next_key, srv.port

    def history(key: int) -> list[OutputChange]:
        return list(servers[key].endpoint.model.history)

    def release(key: int) -> list[OutputChange]:
        srv = servers.pop(key)
        hist = list(srv.endpoint.model.history)
        srv.stop()              # its thread never ran: this closes the pty
        return hist

    def handle(msg: tuple[Any, ...]) -> bool:
        op = msg[0]
        try:
            if op == "create":
                conn.send(("ok", [create(pid, faults) for pid, faults in msg[1]]))
            elif op == "history":
                conn.send(("ok", [history(k) for k in msg[1]]))
            elif op == "release":
                conn.send(("ok", [release(k) for k in msg[1]]))
            elif op == "cpu":
                ru = resource.getrusage(resource.RUSAGE_SELF)
                conn.send(("ok", ru.ru_utime + ru.ru_stime))
            elif op == "stats":
                conn.send(("ok", list(late_ticks)))
                late_ticks.clear()
            elif op == "stalls":
                conn.send(("ok", list(stalls)))
                stalls.clear()
            elif op == "quit":
                for key in list(servers):
                    release(key)
                conn.send(("ok", None))
                return False
            else:
                conn.send(("error", f"unknown op {op!r}"))
        except Exception as exc:    # reported to the parent, the worker keeps serving
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return True

    while True:
        now = time.monotonic()
        timeout = max(0.0, next_tick - now)
        by_fd = {}
        for srv in servers.values():
            if srv._master >= 0:
                by_fd[srv._master] = srv
            if srv._pending:
                timeout = min(timeout, max(0.0, srv._pending[0][0] - now))
        try:
            ready, _, _ = select.select([conn_fd, *by_fd], [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        stepped = set()
        for fd in ready:
            srv = by_fd.get(fd)
            if srv is not None:
                _step(srv, True, now)
                stepped.add(id(srv))
        if now >= next_tick:
            if servers and len(late_ticks) < 1_000_000:
                late_ticks.append(now - next_tick)
            if servers and now - next_tick >= STALL_S and len(stalls) < 100_000:
                stalls.append((next_tick, now - next_tick))
            for srv in servers.values():
                if id(srv) not in stepped:
                    _step(srv, False, now)
            next_tick += tick_s
            if next_tick <= now:
                next_tick = now + tick_s
        else:
            for srv in servers.values():
                if srv._pending and id(srv) not in stepped:
                    srv._flush(now)
        if conn_fd in ready:
            try:
                msg = conn.recv()
            except EOFError:
                break
            if not handle(msg):
                break
    for key in list(servers):
        release(key)


# -- the parent's side ---------------------------------------------------------------

class ProcessFarm:
    """`procs` simulator processes, devices placed round-robin (least loaded first)."""

    def __init__(self, procs: int = 2, tick_s: float | None = None) -> None:
        from simulator.pty_server import TICK_S
        ctx = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self._locks: list[threading.Lock] = []
        self._procs: list[Any] = []
        self._count = [0] * procs
        self._count_lock = threading.Lock()
        for _ in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, tick_s or TICK_S), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._locks.append(threading.Lock())
            self._procs.append(proc)
        self._cpu_at_close = 0.0

    def _call(self, worker: int, *msg: Any) -> Any:
        with self._locks[worker]:
            self._conns[worker].send(msg)
            status, value = self._conns[worker].recv()
        if status != "ok":
            raise RuntimeError(f"simulator worker {worker}: {value}")
        return value

    def create_many(self, specs: Sequence[Spec]) -> list[Dev]:
        placed: dict[int, list[int]] = {}
        with self._count_lock:
            for i in range(len(specs)):
                w = min(range(len(self._count)), key=self._count.__getitem__)
                self._count[w] += 1
                placed.setdefault(w, []).append(i)
        out: list[Dev | None] = [None] * len(specs)
        for w, idx in placed.items():
            made = self._call(w, "create", [specs[i] for i in idx])
            for i, (key, port) in zip(idx, made, strict=True):
                out[i] = Dev(key, w, specs[i][0], port)
        return [d for d in out if d is not None]

    def _by_worker(self, op: str, devs: Sequence[Dev]) -> list[list[OutputChange]]:
        groups: dict[int, list[int]] = {}
        for i, d in enumerate(devs):
            groups.setdefault(d.worker, []).append(i)
        out: list[list[OutputChange]] = [[] for _ in devs]
        for w, idx in groups.items():
            for i, hist in zip(idx, self._call(w, op, [devs[i].key for i in idx]),
                               strict=True):
                out[i] = hist
        if op == "release":
            with self._count_lock:
                for d in devs:
                    self._count[d.worker] -= 1
        return out

    def history(self, devs: Sequence[Dev]) -> list[list[OutputChange]]:
        return self._by_worker("history", devs)

    def release(self, devs: Sequence[Dev]) -> list[list[OutputChange]]:
        return self._by_worker("release", devs)

    def tick_lateness(self) -> list[float]:
        """How late each worker ran each due tick since the last call (seconds): when the
        simulator itself stalled, every device it serves answered late too."""
        out: list[float] = []
        for w in range(len(self._conns)):
            out.extend(self._call(w, "stats"))
        return out

    def stalls(self) -> list[tuple[float, float]]:
        """(due tick, lateness) of every tick a worker ran `STALL_S` or more late since the
        last call: the moments its devices could not answer on time."""
        out: list[tuple[float, float]] = []
        for w in range(len(self._conns)):
            out.extend(tuple(x) for x in self._call(w, "stalls"))
        return sorted(out)

    def cpu_s(self) -> float:
        """CPU seconds used by the live workers so far."""
        return float(sum(self._call(w, "cpu") for w in range(len(self._conns))))

    def close(self) -> None:
        for w, proc in enumerate(self._procs):
            if proc.is_alive():
                with contextlib.suppress(OSError, EOFError, RuntimeError):
                    self._call(w, "quit")
            proc.join(5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            self._conns[w].close()

    def __enter__(self) -> ProcessFarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcessFarm:
    """The simulator as the tests run it: one thread per device in this process."""

    def __init__(self) -> None:
        self._devices: dict[int, Any] = {}
        self._next = 0
        self._lock = threading.Lock()

    def create_many(self, specs: Sequence[Spec]) -> list[Dev]:
        from controller.profiles.loader import resolve_profile
        from simulator.faults import FaultPlan
        from simulator.server import SimulatedDevice
        out = []
        for pid, faults in specs:
            device = SimulatedDevice(resolve_profile(pid).profile, FaultPlan(**faults)).start()
            with self._lock:
                self._next += 1
                key = self._next
                self._devices[key] = device
            out.append(Dev(key, -1, pid, device.port))
        return out

    def _hist(self, key: int) -> list[OutputChange]:
        device = self._devices[key]
        with device.model.lock:
            return list(device.model.history)

    def history(self, devs: Sequence[Dev]) -> list[list[OutputChange]]:
        return [self._hist(d.key) for d in devs]

    def release(self, devs: Sequence[Dev]) -> list[list[OutputChange]]:
        out = []
        for d in devs:
            out.append(self._hist(d.key))
            with self._lock:
                device = self._devices.pop(d.key)
            device.stop()
        return out

    def cpu_s(self) -> float:
        return 0.0      # counted in this process

    def tick_lateness(self) -> list[float]:
        return []       # the per-device threads keep no record

    def close(self) -> None:
        for device in list(self._devices.values()):
            device.stop()
        self._devices.clear()

    def __enter__(self) -> InProcessFarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_farm(kind: str, procs: int) -> ProcessFarm | InProcessFarm:
    return ProcessFarm(procs) if kind == "process" else InProcessFarm()


def first_run(hist: Sequence[OutputChange]) -> tuple[OutputChange, OutputChange] | None:
    """The first on and the first off after it (one channel or the whole device)."""
    on = next((c for c in hist if c.on), None)
    if on is None:
        return None
    off = next((c for c in hist if not c.on and c.t >= on.t and
                (on.channel is None or c.channel in (None, on.channel))), None)
    return None if off is None else (on, off)


def output_left_on(hist: Sequence[OutputChange]) -> bool:
    """True when the last change of any channel was an 'on'."""
    last: dict[int | None, bool] = {}
    for c in hist:
        last[c.channel] = c.on
        if not c.on and c.channel is None:     # a whole-device stop ends every channel
            last = {k: False for k in last}
    return any(last.values())

