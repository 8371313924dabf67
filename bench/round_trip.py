"""Controller round trip against raw pyserial, same bytes, same pty, same run, interleaved.

Per protocol family (HC-200 Modbus RTU, US-300 SCPI lines, ES-4 framed binary)
one simulated device (in a separate process by default) answers:

- controller: `engine.read(entries)` for every read step of the profile's
  `read_telemetry` operation, as DeviceLink.run does it (and, as a third
  column, the whole `DeviceLink.telemetry()` poll with the name mapping);
- raw: the very request bytes the engine sent, written with pyserial's
  `write()` on the same `serial.Serial` object, and the reply read with
  `read(n)` (binary families, n = the reply length seen) or `read()` until the
  line terminator (SCPI). ES-4 requests get a fresh sequence number each time,
  as the device answers a repeated one from memory.

Iterations alternate which side goes first. Ratio = controller median / raw median.

The simulator's own work (decode, model, encode; about 0.25 ms an exchange)
is in both columns and dilutes the ratio, so the same measurement is repeated
against a canned peer: a process that answers each recorded request with its
recorded reply (framed replies get the request's SEQ), about as fast as a pty
round trip can be. That second ratio is the controller's overhead laid bare.

    python bench/round_trip.py
    python bench/round_trip.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import select
import sys
import time
import tty
from collections.abc import Callable
from typing import Any

from common import LoadMeter, emit, summary
from runner import profile
from simfarm import make_farm

from controller.device.link import DeviceLink
from protocols.framed_codec import encode_frame

TARGET_RATIO = 1.5
FAMILIES = {"modbus_rtu": "hc-200", "scpi_line": "us-300", "framed_binary": "es-4"}


class _Tap:
    """Records what one engine call writes and reads, by wrapping the transport's methods."""

    def __init__(self, transport: Any, engine: Any) -> None:
        self.t = transport
        self.engine = engine
        self.writes: list[bytes] = []
        self.reads: list[bytearray] = []
        self._orig: dict[str, Callable[..., Any]] = {}

    def __enter__(self) -> _Tap:
        for name in ("write", "read", "read_some", "read_available"):
            orig = getattr(self.t, name)
            self._orig[name] = orig
            setattr(self.t, name, self._wrap(name, orig))
        if getattr(self.engine, "_read_some", None) is not None:   # FramedEngine caches it
            self.engine._read_some = self.t.read_some
        return self

    def _wrap(self, name: str, orig: Callable[..., Any]) -> Callable[..., Any]:
        def call(*a: Any, **kw: Any) -> Any:
            out = orig(*a, **kw)
            if name == "write":
                self.writes.append(bytes(a[0]))
                self.reads.append(bytearray())
            elif out and self.reads:
                self.reads[-1] += out
            return out
        return call

    def __exit__(self, *exc: object) -> None:
        for name in self._orig:
            delattr(self.t, name)     # back to the class's methods
        if getattr(self.engine, "_read_some", None) is not None:
            self.engine._read_some = self.t.read_some


def capture(pid: str, port: str) -> list[tuple[bytes, bytes]]:
    """The (request, reply) bytes of one telemetry poll's reads against the device at `port`."""
    prof = profile(pid)
    link = DeviceLink.open(prof, port)
    try:
        engine: Any = link.engine
        transport = getattr(engine, "_transport", None) or engine._t   # ScpiEngine: _t
        with _Tap(transport, engine) as tap:
            for entries in _steps(pid):
                engine.read(entries)
    finally:
        link.close()
    exchanges = [(w, bytes(r)) for w, r in zip(tap.writes, tap.reads, strict=True)]
    if not all(r for _, r in exchanges):
        raise RuntimeError(f"{pid}: an exchange of the telemetry read captured no reply")
    return exchanges


def _steps(pid: str) -> list[list[str]]:
    steps = [s.read for s in profile(pid).operations.defined()["read_telemetry"]]
    if not all(steps):
        raise RuntimeError(f"{pid}: read_telemetry has a write step")
    return [list(s) for s in steps if s]


def _canned_peer(master: int, exchanges: list[tuple[bytes, bytes]], sync: int | None) -> None:
    """A device that answers each known request with its recorded reply, nothing else.

    For framed requests the reply carries the request's SEQ (and a new CRC).
    """
    buf = bytearray()
    while True:
        try:
            select.select([master], [], [], 1.0)
            data = os.read(master, 4096)
        except BlockingIOError:
            continue
        except OSError:
            return
        buf += data
        progress = True
        while buf and progress:
            progress = False
            for request, reply in exchanges:
                if sync is not None:
                    if len(buf) >= len(request) and buf[1] == request[1] \
                            and buf[3] == request[3]:
                        os.write(master, encode_frame(sync, buf[2], reply[3], reply[4:-2]))
                        del buf[:len(request)]
                        progress = True
                        break
                elif buf.startswith(request):
                    os.write(master, reply)
                    del buf[:len(request)]
                    progress = True
                    break
        if len(buf) > 4096:
            buf.clear()


class CannedPeer:
    """A canned responder on its own pty, in a forked process (no threads exist yet)."""

    def __init__(self, exchanges: list[tuple[bytes, bytes]], sync: int | None) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tty.setraw(self.master)
        self.port = os.ttyname(self.slave)
        ctx = mp.get_context("fork")
        self.proc = ctx.Process(target=_canned_peer, args=(self.master, exchanges, sync),
                                daemon=True)
        self.proc.start()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.join(2.0)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def measure(pid: str, port: str, exchanges: list[tuple[bytes, bytes]], iterations: int,
            warmup: int) -> dict[str, Any]:
    prof = profile(pid)
    steps = _steps(pid)
    link = DeviceLink.open(prof, port)
    engine: Any = link.engine
    transport = getattr(engine, "_transport", None) or engine._t
    ser = transport._port
    variables: dict[str, Any] = {"channel": 0}
    family = prof.protocol.family
    framed = family == "framed_binary"
    line = family == "scpi_line"
    pmap: Any = prof.protocol
    seq = [200]
    raw_timeout = prof.link.reply_timeout_s

    def raw_once() -> float:
        t0 = time.perf_counter()
        for request, reply in exchanges:
            if framed:
                # A fresh SEQ (never the engine's last or next): same length, same cost.
                seq[0] = 101 + (seq[0] - 100) % 50
                request = encode_frame(pmap.sync, seq[0], request[3], request[4:-2])
            ser.write(request)
            if line:
                buf = bytearray()
                while not buf.endswith(b"\n"):
                    chunk = ser.read(max(1, ser.in_waiting))
                    if not chunk:
                        raise TimeoutError(f"{pid}: raw reply timed out")
                    buf += chunk
            else:
                got = ser.read(len(reply))
                if len(got) != len(reply):
                    raise TimeoutError(f"{pid}: raw reply {len(got)} of {len(reply)} bytes")
        return time.perf_counter() - t0

    def ctrl_once() -> float:
        t0 = time.perf_counter()
        for entries in steps:
            engine.read(entries)
        return time.perf_counter() - t0

    def link_once() -> float:
        t0 = time.perf_counter()
        link.telemetry(variables)
        return time.perf_counter() - t0

    def raw_timed() -> float:
        # pyserial's own timeout for the raw side; the transport's cached one restored after.
        saved = ser.timeout
        ser.timeout = raw_timeout
        try:
            return raw_once()
        finally:
            ser.timeout = saved

    raw: list[float] = []
    ctrl: list[float] = []
    full: list[float] = []
    ratios: list[float] = []
    try:
        for i in range(warmup + iterations):
            if i % 2:
                r = raw_timed()
                c = ctrl_once()
            else:
                c = ctrl_once()
                r = raw_timed()
            f = link_once()
            if i >= warmup:
                raw.append(r)
                ctrl.append(c)
                full.append(f)
                ratios.append(c / r)
    finally:
        link.close()
    rs, cs, fs = summary(raw, 1e6, 1), summary(ctrl, 1e6, 1), summary(full, 1e6, 1)
    ratio = cs["median"] / rs["median"]
    return {
        "profile": pid,
        "family": family,
        "exchanges_per_poll": len(exchanges),
        "request_bytes": [len(w) for w, _ in exchanges],
        "reply_bytes": [len(r) for _, r in exchanges],
        "raw_pyserial_us": rs,
        "controller_engine_read_us": cs,
        "controller_link_telemetry_us": fs,
        "overhead_us_per_exchange": round((cs["median"] - rs["median"]) / len(exchanges), 1),
        "ratio_of_medians": round(ratio, 3),
        "ratio_link_telemetry": round(fs["median"] / rs["median"], 3),
        "paired_ratio": summary(ratios, 1.0, 3),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio <= TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3,
                    help="whole measurement repeated (spread of medians under noise)")
    ap.add_argument("--sim", choices=("process", "inprocess"), default="process")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--no-canned", action="store_true",
                    help="skip the second peer (a canned responder, no simulator cost)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.iterations, args.warmup, args.repeats = 300, 30, 1
    meter = LoadMeter()
    farm = make_farm(args.sim, 1)
    peers = ["simulator"] if args.no_canned else ["simulator", "canned"]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {p: {} for p in peers}
    cpu0 = farm.cpu_s()
    try:
        for rep in range(args.repeats):
            for family in args.families.split(","):
                pid = FAMILIES[family]
                (dev,) = farm.create_many([(pid, {})])
                try:
                    exchanges = capture(pid, dev.port)
                    runs = {"simulator": measure(pid, dev.port, exchanges, args.iterations,
                                                 args.warmup)}
                finally:
                    farm.release([dev])
                if "canned" in peers:
                    pmap: Any = profile(pid).protocol
                    sync = pmap.sync if family == "framed_binary" else None
                    peer = CannedPeer(exchanges, sync)
                    try:
                        runs["canned"] = measure(pid, peer.port, exchanges, args.iterations,
                                                 args.warmup)
                    finally:
                        peer.close()
                for name, res in runs.items():
                    res["repeat"] = rep
                    res["peer"] = name
                    results[name].setdefault(family, []).append(res)
                    print(f"# {name} peer, {family}: raw {res['raw_pyserial_us']['median']} us,"
                          f" controller {res['controller_engine_read_us']['median']} us, ratio "
                          f"{res['ratio_of_medians']}", file=sys.stderr, flush=True)
        load = meter.report(extra_busy_s=farm.cpu_s() - cpu0)
    finally:
        farm.close()
    spread = {peer: {fam: {"ratio_min": min(r["ratio_of_medians"] for r in rs),
                           "ratio_max": max(r["ratio_of_medians"] for r in rs),
                           "raw_median_us": [r["raw_pyserial_us"]["median"] for r in rs],
                           "controller_median_us": [r["controller_engine_read_us"]["median"]
                                                    for r in rs]}
                     for fam, rs in by_fam.items()}
              for peer, by_fam in results.items()}
    parts = []
    missed = []
    for peer_name, by_fam in spread.items():
        for fam, sp in by_fam.items():
            raw_m, ctrl_m = sp["raw_median_us"], sp["controller_median_us"]
            parts.append(f"{peer_name} {fam} raw {min(raw_m)}-{max(raw_m)} us, controller "
                         f"{min(ctrl_m)}-{max(ctrl_m)} us, {sp['ratio_min']}-{sp['ratio_max']}x")
            if sp["ratio_max"] > TARGET_RATIO:
                missed.append(f"{peer_name} {fam}")
    line = "; ".join(parts) + "; target <= 1.5x " + (
        "met" if not missed else f"MISSED for {', '.join(missed)}")
    emit("round_trip", {"config": {"iterations": args.iterations, "warmup": args.warmup,
                                   "repeats": args.repeats, "sim": args.sim,
                                   "quick": args.quick},
                        "results": results, "ratio_spread": spread, "load": load}, line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
