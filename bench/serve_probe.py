"""`modctl serve` with probes, for finding where a stop's time goes (`--probe`).

    python bench/serve_probe.py serve --port 0 --db DB     # as `modctl serve ...`

Runs the same `controller.cli.main.main` in this process, plus:
- every garbage collection (common.GcPauses: start, duration, generation), and after each
  full one the number of objects the collector tracks;
- a GIL probe: a thread that sleeps `PROBE_PERIOD_S` over and over and notes how late it
  wakes. Beside the out-of-process canary (the OS's lateness) this is the wait for the GIL
  that any thread of the service, a session worker posting a stop included, sees;
- an event-loop probe: a task on uvicorn's loop that sleeps `PROBE_PERIOD_S` over and over
  and notes how late it wakes (the loop busy with other callbacks, or waiting for the GIL);
- each stop request: the moment it reached the ASGI application (uvicorn has read and
  parsed it on the event loop), the moment the service's `Runs.stop` / `Runs.stop_all`
  was entered (the request has been parsed, authenticated and handed to its endpoint),
  each hand-off of the request to the thread pool (FastAPI's `run_in_threadpool` for a
  sync dependency or endpoint: submitted, started on a worker, done, resumed on the loop),
  the moment before the first write to that device's port after it (the stop command);
  wrappers installed here at run time, the controller's code is not changed;
- `$BENCH_SWITCHINTERVAL`: sys.setswitchinterval for the service (CPython's default 5 ms);
- `$BENCH_ASYNC_STOP=1`, an EXPERIMENT (a proposed fix tried from outside, not the
  service as shipped): POST /api/sessions/{id}/stop and /estop answered by `async`
  routes put ahead of the service's own, which check the bearer token and post the stop
  on the event loop itself (no thread-pool hand-off before the stop), then wait for the
  confirmation on a thread. No CSRF check: the bench sends no cookies.
At exit (SIGTERM) it writes them as JSON to `$BENCH_PROBE_OUT`. The probe thread costs a
wake-up every 2 ms; the figures without `--probe` are taken without it.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from common import GcPauses, summary

PROBE_PERIOD_S = 0.002
MAX_SAMPLES = 2_000_000


def _probe(samples: list[tuple[float, float]], stop: threading.Event) -> None:
    while not stop.is_set() and len(samples) < MAX_SAMPLES:
        t = time.monotonic()
        time.sleep(PROBE_PERIOD_S)
        samples.append((t, time.monotonic() - t - PROBE_PERIOD_S))


Note = Callable[[list[Any]], None]
DeviceOp = tuple[str, str, float, float, bool]     # port, op, began, ended, failed
TRACED_OPS = ("start", "stop", "emergency_stop")


def _trace_device_ops(ops: list[DeviceOp]) -> None:
    """Wrap DeviceLink.run: `ops` gets each start and stop exchange (as bench/runner.py's
    TracedLink does for the benchmarks without the service)."""
    from controller.device.link import DeviceLink

    run = DeviceLink.run

    def traced_run(self: DeviceLink, op: str, variables: Any) -> Any:
        if op not in TRACED_OPS:
            return run(self, op, variables)
        t0 = time.monotonic()
        failed = True
        try:
            out = run(self, op, variables)
            failed = False
            return out
        finally:
            engine: Any = self.engine
            transport = getattr(engine, "_transport", None) or getattr(engine, "_t", None)
            ops.append((str(getattr(transport, "port_name", "")), op, t0, time.monotonic(),
                        failed))

    DeviceLink.run = traced_run                  # type: ignore[method-assign]


def _trace_stops(stops: list[tuple[float, str, str, float | None]]) -> Note:
    """Wrap Runs.stop, Runs.stop_all and SerialTransport.write: `stops` gets (endpoint
    entered, session id, port, first write to the port after it). Returns the noting
    function (for the experimental routes)."""
    from controller.service.runs import Run, Runs
    from controller.session.report import SessionReport
    from protocols.transport import SerialTransport

    pending: dict[str, int] = {}      # port -> index in `stops` of its stop awaiting a write
    lock = threading.Lock()
    stop, stop_all, write = Runs.stop, Runs.stop_all, SerialTransport.write

    def note(runs: list[Run]) -> None:
        t = time.monotonic()
        with lock:
            for run in runs:
                pending[run.slot.row.port] = len(stops)
                stops.append((t, run.id, run.slot.row.port, None))

    def traced_stop(self: Runs, run: Run, *, emergency: bool, by: str
                    ) -> SessionReport | None:
        note([run])
        return stop(self, run, emergency=emergency, by=by)

    def traced_stop_all(self: Runs, *, emergency: bool, reason: str) -> list[Run]:
        note(self.active())
        return stop_all(self, emergency=emergency, reason=reason)

    def traced_write(self: SerialTransport, data: bytes) -> None:
        if pending:
            t = time.monotonic()
            with lock:
                i = pending.pop(self.port_name, None)
                if i is not None:
                    stops[i] = (*stops[i][:3], t)
        write(self, data)

    Runs.stop = traced_stop                      # type: ignore[method-assign]
    Runs.stop_all = traced_stop_all              # type: ignore[method-assign]
    SerialTransport.write = traced_write         # type: ignore[method-assign]
    return note


Hop = tuple[str, str, float, float, float, float]


def _async_stop_routes(app: Any, note: Note) -> None:
    """The experiment (`$BENCH_ASYNC_STOP`): stop and e-stop routes without a thread-pool
    hand-off before the stop is posted."""
    import asyncio

    from fastapi import Request
    from fastapi.responses import JSONResponse
    from fastapi.routing import APIRoute

    from controller.service.api_sessions import report_json
    from controller.service.runs import STOP_WAIT_S, Run

    async def stop(session_id: str, request: Request) -> JSONResponse:
        ctx = request.app.state.ctx
        header = request.headers.get("authorization", "")
        login = ctx.auth.current(header[7:].strip()) if header[:7].lower() == "bearer " \
            else None
        if login is None:
            return JSONResponse({"error": "log in first"}, 401)
        run = ctx.runs.get(session_id)
        if not isinstance(run, Run):
            return JSONResponse({"error": f"no running session {session_id}"}, 409)
        emergency = request.url.path.endswith("/estop")
        note([run])
        run.session.request_stop("operator", emergency=emergency,
                                 reason=f"operator stop by {login.account.name} (bench "
                                 "experiment: async route)")
        report = await asyncio.to_thread(run.session.wait, STOP_WAIT_S)
        if report is None:
            return JSONResponse({"note": "stop posted; not confirmed yet"}, 202)
        return JSONResponse(report_json(report))

    # This module's annotations are strings (PEP 563); FastAPI needs the real classes.
    stop.__annotations__ = {"session_id": str, "request": Request, "return": JSONResponse}
    for kind in ("stop", "estop"):
        app.router.routes.insert(0, APIRoute(f"/api/sessions/{{session_id}}/{kind}", stop,
                                             methods=["POST"]))


def _trace_loop(asgi_in: list[tuple[float, str]], loop_late: list[tuple[float, float]],
                hops: list[Hop], note: Note) -> None:
    """Stamp stop requests at the ASGI application's door and at each thread-pool hand-off;
    probe the event loop's lateness (started when the hub is bound to the running loop)."""
    import asyncio
    import contextvars

    import fastapi.dependencies.utils as fastapi_deps
    import fastapi.routing as fastapi_routing

    from controller.service import server
    from controller.service.events import EventHub

    tag: contextvars.ContextVar[str] = contextvars.ContextVar("bench_stop_path", default="")
    run_in_threadpool = vars(fastapi_routing)["run_in_threadpool"]

    async def traced_run(func: Any, *args: Any, **kwargs: Any) -> Any:
        path = tag.get()
        if not path:
            return await run_in_threadpool(func, *args, **kwargs)
        stamps: list[float] = [time.monotonic()]

        def timed() -> Any:
            stamps.append(time.monotonic())
            try:
                return func(*args, **kwargs)
            finally:
                stamps.append(time.monotonic())
        try:
            return await run_in_threadpool(timed)
        finally:
            name = getattr(kwargs.get("function", func), "__name__", repr(func))
            if len(stamps) == 3:
                hops.append((path, name, stamps[0], stamps[1], stamps[2], time.monotonic()))

    create_app, bind = vars(server)["create_app"], EventHub.bind

    def traced_create_app(ctx: Any) -> Any:
        app = create_app(ctx)
        if os.environ.get("BENCH_ASYNC_STOP") == "1":
            _async_stop_routes(app, note)

        async def traced(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["method"] == "POST" and \
                    scope["path"].endswith(("/stop", "/estop")):
                asgi_in.append((time.monotonic(), scope["path"]))
                tag.set(scope["path"])
            await app(scope, receive, send)
        return traced

    async def probe() -> None:
        while len(loop_late) < MAX_SAMPLES:
            t = time.monotonic()
            await asyncio.sleep(PROBE_PERIOD_S)
            loop_late.append((t, time.monotonic() - t - PROBE_PERIOD_S))

    def traced_bind(self: EventHub, loop: asyncio.AbstractEventLoop) -> None:
        if not loop_late and not getattr(traced_bind, "started", False):
            traced_bind.started = True          # type: ignore[attr-defined]
            loop.call_soon_threadsafe(lambda: loop.create_task(probe()))
        bind(self, loop)

    vars(server)["create_app"] = traced_create_app   # server.py calls it by this name
    EventHub.bind = traced_bind                  # type: ignore[method-assign]
    # Both modules call it by this name (starlette.concurrency.run_in_threadpool).
    vars(fastapi_routing)["run_in_threadpool"] = traced_run
    vars(fastapi_deps)["run_in_threadpool"] = traced_run


# -- reading what it found (the bench's side) ------------------------------------------

def stop_parts(probe: dict[str, Any], stops: list[tuple[str, float, float]]
                ) -> dict[str, Any]:
    """Each stop split at the service's probes: `loop_in` (request sent -> the ASGI
    application called: the event loop getting round to it, uvicorn reading and parsing
    it), `to_endpoint` (-> the endpoint entered: routing, authentication, the thread-pool
    hand-offs), `worker`
    (endpoint -> the stop command's first write: the session worker waking, with the GIL),
    `device` (that write -> output off at the device; the ES-4's ramp taken off)."""
    seen = {sid: (t_in, t_write) for t_in, sid, _, t_write in probe.get("stops", [])
            if t_write is not None}
    door = {path.split("/")[3]: t for t, path in probe.get("asgi_in", [])
            if path.count("/") == 4}
    parts: dict[str, list[float]] = {"loop_in": [], "to_endpoint": [], "worker": [],
                                      "device": []}
    for sid, sent, off in stops:
        if sid in seen and sid in door:
            t_in, t_write = seen[sid]
            parts["loop_in"].append(door[sid] - sent)
            parts["to_endpoint"].append(t_in - door[sid])
            parts["worker"].append(t_write - t_in)
            parts["device"].append(off - t_write)
    out: dict[str, Any] = {k: summary(v, 1e3) for k, v in parts.items()}
    # The thread-pool hand-offs of these stops: to a worker, on it, back on the loop.
    ids = {sid for sid, _, _ in stops}
    hop: dict[str, list[float]] = {}
    per_stop: dict[str, int] = {}
    for path, name, t_sub, t_run, t_done, t_back in probe.get("hops", []):
        sid = path.split("/")[3] if path.count("/") == 4 else ""
        if sid in ids:
            per_stop[sid] = per_stop.get(sid, 0) + 1
            hop.setdefault(f"{name}: to a worker", []).append(t_run - t_sub)
            hop.setdefault(f"{name}: running", []).append(t_done - t_run)
            hop.setdefault(f"{name}: back on the loop", []).append(t_back - t_done)
    out["thread_pool_hops_per_stop"] = sorted(set(per_stop.values()))
    out["thread_pool_hops_ms"] = {k: summary(v, 1e3) for k, v in hop.items()}
    return out


def stop_error_parts(probe: dict[str, Any], ends: list[tuple[str, float, float]],
                     planned: float, worst: list[dict[str, Any]]) -> dict[str, Any]:
    """Each planned stop split at the device link (as bench/runner.py `attribute`):
    `ctrl_stop` = the stop exchange began - (the start exchange began + planned): the
    service's lateness; `dev_stop` = output off - the stop exchange began: the wire, the
    device, a retry; `stop_exchange` = how long the stop exchange took (a retry shows).
    The worst sessions get the same figures."""
    ops: dict[str, list[tuple[str, float, float, bool]]] = {}
    for port, op, a, b, failed in probe.get("device_ops", []):
        ops.setdefault(port, []).append((op, a, b, failed))
    parts: dict[str, list[float]] = {"ctrl_stop": [], "dev_stop": [], "stop_exchange": []}
    found: dict[tuple[str, float], dict[str, float]] = {}
    for port, on, off in ends:
        mine = ops.get(port, [])
        start = max((a for op, a, _, _ in mine if op == "start" and a <= on), default=None)
        stop = next(((a, b) for op, a, b, _ in mine if op in ("stop", "emergency_stop")
                     and on <= a <= off + 1.0), None)
        if start is None or stop is None:
            continue
        cell = {"ctrl_stop": stop[0] - (start + planned), "dev_stop": off - stop[0],
                "stop_exchange": stop[1] - stop[0]}
        for k, v in cell.items():
            parts[k].append(v)
        found[(port, on)] = cell
    for w in worst:
        cell = found.get((w.get("port", ""), w.get("on", 0.0)), {})
        w.update({f"{k}_ms": round(v * 1e3, 2) for k, v in cell.items()})
    return {k: summary(v, 1e3) for k, v in parts.items()}


def probe_figures(probe: dict[str, Any], res: dict[str, Any]) -> None:
    """Add what serve_probe.py saw in the level's stretch: the GIL probe's lateness, the
    garbage collections, and for each worst stop the collection and GIL wait inside it."""
    t0, t1 = res.pop("window")
    worst = res.get("worst", [])
    stops = res.pop("stops", [])
    ends = res.pop("ends", [])
    if probe and stops:
        res["service_probe_stop_parts_ms"] = stop_parts(probe, stops)
    if probe and ends:
        res["service_probe_stop_error_parts_ms"] = stop_error_parts(
            probe, ends, float(res["planned_s"]), worst)
    for w in worst:
        for key in ("port", "on"):
            w.pop(key, None)
    if not probe:
        for w in worst:
            w.pop("sent", None)
            w.pop("off", None)
        return
    late = [x for t, x in probe["gil_late"] if t0 <= t <= t1]
    gcs = [(t, d, g) for t, d, g in probe["gc"] if t0 <= t <= t1]
    res["service_probe"] = {
        "switchinterval_s": probe["switchinterval_s"],
        "gil_probe_late_ms": summary(late, 1e3),
        "event_loop_late_ms": summary([x for t, x in probe.get("loop_late", [])
                                       if t0 <= t <= t1], 1e3),
        "gc_ms": {f"gen{g}": summary([d for _, d, gen in gcs if gen == g], 1e3)
                  for g in (0, 1, 2)}}
    for w in worst:
        b = w.pop("off")
        w.update(probe_window(probe, w.pop("sent", b - 0.1), b))


def probe_window(probe: dict[str, Any], a: float, b: float) -> dict[str, Any]:
    """What the service's probes saw within [a, b]: garbage collection (ms, and the
    longest one touching it) and the GIL probe's worst lateness."""
    touching = [(t, d) for t, d, _ in probe["gc"] if t < b and t + d > a]
    inside = [x for t, x in probe["gil_late"] if a - 0.01 <= t <= b]
    return {"gc_ms_inside": round(sum(min(b, t + d) - max(a, t) for t, d in touching) * 1e3,
                                  2),
            "gc_longest_touching_ms": round(max((d for _, d in touching), default=0.0) * 1e3,
                                            2),
            "gil_probe_late_max_ms": round(max(inside) * 1e3, 2) if inside else None}


def main() -> int:
    interval = os.environ.get("BENCH_SWITCHINTERVAL")
    if interval:
        sys.setswitchinterval(float(interval))
    out = os.environ.get("BENCH_PROBE_OUT", "")
    gcp = GcPauses()
    # Objects the collector tracks, after each full collection: what the next one walks.
    tracked: list[tuple[float, int]] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2 and len(tracked) < MAX_SAMPLES:
            tracked.append((time.monotonic(), len(gc.get_objects())))

    gc.callbacks.append(count)
    samples: list[tuple[float, float]] = []
    stops: list[tuple[float, str, str, float | None]] = []
    note = _trace_stops(stops)
    device_ops: list[DeviceOp] = []
    _trace_device_ops(device_ops)
    asgi_in: list[tuple[float, str]] = []
    loop_late: list[tuple[float, float]] = []
    hops: list[Hop] = []
    _trace_loop(asgi_in, loop_late, hops, note)
    stop = threading.Event()
    threading.Thread(target=_probe, args=(samples, stop), daemon=True, name="gil probe").start()

    def dump() -> None:
        stop.set()
        if out:
            with open(out, "w", encoding="utf-8") as f:
                json.dump({"switchinterval_s": sys.getswitchinterval(),
                           "period_s": PROBE_PERIOD_S, "gc": gcp.pauses,
                           "gil_late": samples, "stops": stops, "asgi_in": asgi_in,
                           "loop_late": loop_late, "hops": hops,
                           "device_ops": device_ops, "gc_tracked": tracked,
                           "gc_gen2_cpu": gcp.cpu}, f)

    atexit.register(dump)
    from controller.cli.main import main as modctl
    return modctl(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
