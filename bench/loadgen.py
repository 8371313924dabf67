"""Load on a clinic service from a separate process: live-stream (SSE) clients and a flood of
GET requests, so that the bench process that times the stops shares no GIL with them.

Clients of `/api/events`, by kind:
- `normal`: reads every event as it comes (a screen);
- `paused`: reads, but stops reading for `PAUSE_S` every `PAUSE_EVERY_S` (a busy browser tab);
- `slow`: takes at most `SLOW_EVENTS_PER_S` events a second (a screen on a bad link);
- `stalled`: never reads until the end (a hung client), with a small receive buffer so that
  the kernel does not hide it for long. The service must drop it (its stream ends with a
  `dropped` event once it is read) without any stop waiting for it.
Each client notes the moment (time.monotonic()) it received each session's final event, so
that the parent can time "stop sent -> every screen shows it".

The flood: `flood` connections, each sending GETs back to back (keep-alive, closed loop) over
`FLOOD_PATHS`, the requests of consoles refreshing their screens; with a `rate` (requests
a second, all connections together) each connection sends on a fixed schedule instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from common import summary

PAUSE_S, PAUSE_EVERY_S = 1.0, 3.0
SLOW_EVENTS_PER_S = 20.0
# The stalled client's receive buffer: the kernel then holds a few KiB for it, not MiBs.
STALLED_RCVBUF = 4096
# How long the stalled client may take, at the end, to read what was held for it.
DRAIN_S = 5.0
# Flood requests, in turn ({dev}: a registered device's name).
FLOOD_PATHS = ("/api/devices", "/api/devices/{dev}", "/api/sessions?limit=20", "/api/alarms",
               "/api/me")
LAT_CAP = 200_000        # latency samples kept per stretch
# Live-stream clients by kind (loadgen.py); 20 in all, as issue 12 asks.
CLIENT_MIX = {"normal": 17, "paused": 1, "slow": 1, "stalled": 1}


def client_mix(total: int) -> dict[str, int]:
    """`total` clients: one paused, one slow, one stalled, the rest reading."""
    if total <= 0:
        return {}
    special = {k: 1 for k in ("paused", "slow", "stalled")}
    return {"normal": max(0, total - 3), **dict(list(special.items())[:total])}


@dataclass
class SseStats:
    kind: str
    events: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    dropped_at: float | None = None
    ended: str = ""
    final_seen: dict[str, float] = field(default_factory=dict)   # session id -> monotonic

    def take(self) -> dict[str, Any]:
        out = {"kind": self.kind, "events": dict(self.events), "bytes": self.bytes,
               "dropped_at": self.dropped_at, "ended": self.ended,
               "final_seen": dict(self.final_seen)}
        self.events.clear()
        self.bytes = 0
        self.final_seen.clear()
        return out


@dataclass
class FloodStats:
    lat: dict[str, list[float]] = field(default_factory=dict)
    status: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def take(self, wall: float) -> dict[str, Any]:
        every = [x for v in self.lat.values() for x in v]
        out = {"requests": len(every), "per_s": round(len(every) / wall, 1) if wall else 0.0,
               "status": {str(k): v for k, v in self.status.items()},
               "errors": dict(self.errors), "latency_ms": summary(every, 1e3),
               "by_path_latency_ms": {p: summary(v, 1e3) for p, v in self.lat.items()}}
        self.lat.clear()
        self.status.clear()
        self.errors.clear()
        return out


def _request(host: str, path: str, token: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: */*\r\n\r\n").encode()


async def _headers(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def _chunk(reader: asyncio.StreamReader) -> bytes | None:
    """One chunk of a chunked body; None at its end."""
    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
    if size == 0:
        await reader.readuntil(b"\r\n")
        return None
    data = await reader.readexactly(size)
    await reader.readexactly(2)
    return data


def _note(stats: SseStats, message: bytes) -> str:
    """Count one SSE message; returns its kind."""
    kind, data = "", b""
    for line in message.split(b"\n"):
        if line.startswith(b"event: "):
            kind = line[7:].decode()
        elif line.startswith(b"data: "):
            data = line[6:]
    if not kind:
        return ""
    stats.events[kind] += 1
    if kind == "session":
        with contextlib.suppress(ValueError):
            body = json.loads(data)
            if body.get("final") and body.get("id"):
                stats.final_seen.setdefault(str(body["id"]), time.monotonic())
    elif kind == "dropped" and stats.dropped_at is None:
        stats.dropped_at = time.monotonic()
    return kind


async def _sse(host: str, port: int, token: str, stats: SseStats,
               ready: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(_request(f"{host}:{port}", "/api/events", token))
        status, _ = await _headers(reader)
        if status != 200:
            stats.ended = f"status {status}"
            ready.set()
            return
        buf = b""
        last_pause = time.monotonic()
        while True:
            data = await _chunk(reader)
            if data is None:
                stats.ended = stats.ended or "end of stream"
                return
            stats.bytes += len(data)
            buf += data
            while b"\n\n" in buf:
                message, buf = buf.split(b"\n\n", 1)
                kind = _note(stats, message)
                if kind == "hello":
                    ready.set()
                if stats.kind == "slow" and kind:
                    await asyncio.sleep(1.0 / SLOW_EVENTS_PER_S)
            if stats.kind == "paused" and time.monotonic() - last_pause >= PAUSE_EVERY_S:
                await asyncio.sleep(PAUSE_S)
                last_pause = time.monotonic()
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        stats.ended = stats.ended or f"{type(exc).__name__}: {exc}"
    finally:
        ready.set()
        writer.close()


def _stalled_open(host: str, port: int, token: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    sock.connect((host, port))
    sock.sendall(_request(f"{host}:{port}", "/api/events", token))
    return sock


def _stalled_drain(sock: socket.socket, stats: SseStats) -> None:
    """Read, at last, what the service held for the stalled client; look for `dropped`."""
    sock.settimeout(0.5)
    got = bytearray()
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline and b"event: dropped" not in got[-4096:]:
        try:
            part = sock.recv(1 << 16)
        except TimeoutError:
            continue
        if not part:
            break
        got += part
    stats.bytes += len(got)
    for kind in ("hello", "device", "telemetry", "session", "dropped"):
        stats.events[kind] += got.count(f"event: {kind}\n".encode())
    stats.ended = "dropped" if b"event: dropped" in got else "not dropped"
    sock.close()


async def _flood(host: str, port: int, token: str, paths: list[str], k: int,
                 stats: FloodStats, stop: asyncio.Event, interval: float) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = k
    due = time.monotonic()
    try:
        while not stop.is_set():
            if interval:
                due += interval
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            path = paths[i % len(paths)]
            i += 1
            t = time.monotonic()
            writer.write(_request(f"{host}:{port}", path, token))
            status, headers = await _headers(reader)
            await reader.readexactly(int(headers.get("content-length", "0")))
            lat = stats.lat.setdefault(path.split("?")[0], [])
            if len(lat) < LAT_CAP:
                lat.append(time.monotonic() - t)
            stats.status[status] += 1
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        stats.errors[type(exc).__name__] += 1
    finally:
        writer.close()


async def _run(conn: Connection, base: str, token: str, kinds: dict[str, int], flood: int,
               rate: float, devices: list[str]) -> None:
    host, _, port_text = base.removeprefix("http://").partition(":")
    port = int(port_text)
    loop = asyncio.get_running_loop()
    clients = [SseStats(kind) for kind, n in kinds.items() if kind != "stalled"
               for _ in range(n)]
    readies = [asyncio.Event() for _ in clients]
    tasks = [asyncio.create_task(_sse(host, port, token, s, r))
             for s, r in zip(clients, readies, strict=True)]
    stalled = [(SseStats("stalled"), _stalled_open(host, port, token))
               for _ in range(kinds.get("stalled", 0))]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 30)
    paths = [p.replace("{dev}", devices[i % len(devices)]) for i, p in enumerate(FLOOD_PATHS)]
    flood_stats = FloodStats()
    stop_flood = asyncio.Event()
    interval = flood / rate if rate > 0 else 0.0
    flooders = [asyncio.create_task(_flood(host, port, token, paths, k, flood_stats,
                                           stop_flood, interval)) for k in range(flood)]
    inbox: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
    conn.send(("ready", [s.ended for s in clients]))
    t_take = time.monotonic()
    while True:
        msg = await inbox.get()
        if msg == "take" or msg == "quit":
            if msg == "quit":
                stop_flood.set()
                await asyncio.gather(*flooders, return_exceptions=True)
                for stats, sock in stalled:
                    await loop.run_in_executor(None, _stalled_drain, sock, stats)
            wall = time.monotonic() - t_take
            t_take = time.monotonic()
            conn.send(("ok", {"sse": [s.take() for s in clients] +
                              [s.take() for s, _ in stalled],
                              "flood": flood_stats.take(wall)}))
            if msg == "quit":
                break
    loop.remove_reader(conn.fileno())
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _main(conn: Connection, base: str, token: str, kinds: dict[str, int], flood: int,
          rate: float, devices: list[str]) -> None:
    try:
        asyncio.run(_run(conn, base, token, kinds, flood, rate, devices))
    except Exception as exc:   # reported to the parent, which says so in its results
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class LoadGen:
    """The load process: `take()` returns (and resets) what it saw since the last call."""

    def __init__(self, base: str, token: str, kinds: dict[str, int], flood: int,
                 rate: float, devices: list[str]) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_main, args=(child, base, token, kinds, flood, rate,
                                                    devices),
                                daemon=True, name="bench load")
        self.proc.start()
        child.close()
        status, value = self._recv(60.0)
        if status != "ready":
            self.proc.kill()
            raise SystemExit(f"the load process did not start: {value}")
        self.not_ready = [v for v in value if v]

    def _recv(self, timeout: float) -> tuple[str, Any]:
        if not self._conn.poll(timeout):
            return "error", f"no answer within {timeout:g} s"
        status, value = self._conn.recv()
        return str(status), value

    def take(self) -> dict[str, Any]:
        self._conn.send("take")
        status, value = self._recv(30.0)
        return value if status == "ok" else {"error": value}

    def close(self) -> dict[str, Any]:
        """Stop the flood, read the stalled clients' streams, return the last figures."""
        try:
            self._conn.send("quit")
            status, value = self._recv(DRAIN_S * 4 + 30.0)
        except (OSError, EOFError) as exc:
            status, value = "error", str(exc)
        self.proc.join(10.0)
        if self.proc.is_alive():
            self.proc.kill()
        return value if status == "ok" else {"error": value}

    @property
    def pid(self) -> int | None:
        return self.proc.pid


def clients_summary(taken: dict[str, Any], wall_s: float, t_ref: dict[str, float],
                    t0: float) -> dict[str, Any]:
    """The load's figures over one stretch, per client kind. `t_ref`: session id -> the
    moment its final event became due (stop sent, or output off at the device); a screen's
    latency is when it received that event minus this. `t0`: the run's start, for
    `dropped_at_s`."""
    kinds: dict[str, dict[str, Any]] = {}
    for c in taken.get("sse", []):
        k = kinds.setdefault(c["kind"], {"clients": 0, "dropped": 0, "ended": Counter(),
                                         "telemetry_per_s": [], "screen": [],
                                         "dropped_at_s": []})
        k["clients"] += 1
        k["telemetry_per_s"].append(c["events"].get("telemetry", 0) / wall_s if wall_s else 0)
        if c["events"].get("dropped") or c["ended"] == "dropped":
            k["dropped"] += 1
        if c["dropped_at"] is not None:
            k["dropped_at_s"].append(round(c["dropped_at"] - t0, 1))
        if c["ended"]:
            k["ended"][c["ended"]] += 1
        k["screen"].extend(t - t_ref[sid] for sid, t in c["final_seen"].items()
                           if sid in t_ref)
    out: dict[str, Any] = {}
    for kind, k in kinds.items():
        rates = k["telemetry_per_s"]
        out[kind] = {"clients": k["clients"], "dropped": k["dropped"],
                     "ended": dict(k["ended"]), "dropped_at_s": k["dropped_at_s"],
                     "telemetry_events_per_s_min": round(min(rates), 1) if rates else None,
                     "final_event_after_ms": summary(k["screen"], 1e3)}
    return {"sse": out, "flood": taken.get("flood", {}), "error": taken.get("error")}
