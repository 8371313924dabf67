"""Where a telemetry poll's time goes: cProfile (or pyinstrument) of engine reads.

One device per family answers: a canned peer (default, so the profile is the
controller's own work) or the simulator. Prints the top functions by own time
per family, and the system calls per poll counted with a wrapped `os`/`select`/
`termios`/`fcntl` layer.

    python bench/profile_poll.py                  # cProfile, canned peer
    python bench/profile_poll.py --pyinstrument   # call tree instead
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from round_trip import FAMILIES, CannedPeer, _steps, capture
from runner import profile
from simfarm import ProcessFarm

from controller.device.link import DeviceLink


def _count_syscalls() -> tuple[Counter[str], Callable[[], None]]:
    """Wrap the modules pyserial and the transport call into; returns (counter, undo)."""
    import fcntl
    import os
    import select
    import termios
    counts: Counter[str] = Counter()
    undo: list[tuple[Any, str, Any]] = []
    for mod, names in ((os, ("read", "write")), (select, ("select",)),
                       (termios, ("tcdrain", "tcflush", "tcgetattr", "tcsetattr")),
                       (fcntl, ("ioctl",))):
        for name in names:
            orig = getattr(mod, name)

            def wrapped(*a: Any, __orig: Any = orig, __name: str = f"{mod.__name__}.{name}",
                        **kw: Any) -> Any:
                counts[__name] += 1
                return __orig(*a, **kw)

            setattr(mod, name, wrapped)
            undo.append((mod, name, orig))

    def restore() -> None:
        for mod, name, orig in undo:
            setattr(mod, name, orig)
    return counts, restore


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--polls", type=int, default=2000)
    ap.add_argument("--peer", choices=("canned", "simulator"), default="canned")
    ap.add_argument("--pyinstrument", action="store_true")
    ap.add_argument("--top", type=int, default=18)
    args = ap.parse_args(argv)
    farm = ProcessFarm(1)
    out: dict[str, Any] = {}
    try:
        for family, pid in FAMILIES.items():
            (dev,) = farm.create_many([(pid, {})])
            peer = None
            try:
                exchanges = capture(pid, dev.port)
                port = dev.port
                if args.peer == "canned":
                    pmap: Any = profile(pid).protocol
                    peer = CannedPeer(exchanges, pmap.sync if family == "framed_binary"
                                      else None)
                    port = peer.port
                link = DeviceLink.open(profile(pid), port)
                steps = _steps(pid)
                engine: Any = link.engine
                for _ in range(100):
                    for entries in steps:
                        engine.read(entries)
                counts, restore = _count_syscalls()
                try:
                    for entries in steps:
                        engine.read(entries)
                finally:
                    restore()
                t0 = time.perf_counter()
                if args.pyinstrument:
                    from pyinstrument import Profiler
                    prof = Profiler(interval=0.0001)
                    prof.start()
                    for _ in range(args.polls):
                        for entries in steps:
                            engine.read(entries)
                    prof.stop()
                    text = prof.output_text(unicode=False, color=False, show_all=False)
                else:
                    cp = cProfile.Profile()
                    cp.enable()
                    for _ in range(args.polls):
                        for entries in steps:
                            engine.read(entries)
                    cp.disable()
                    buf = io.StringIO()
                    pstats.Stats(cp, stream=buf).sort_stats("tottime").print_stats(args.top)
                    text = buf.getvalue()
                wall = time.perf_counter() - t0
                link.close()
                out[family] = {"syscalls_per_poll": dict(counts),
                               "exchanges_per_poll": len(exchanges),
                               "profiled_us_per_poll": round(wall / args.polls * 1e6, 1)}
                print(f"===== {family} ({pid}, {args.peer} peer): {len(exchanges)} exchanges "
                      f"per poll; system calls per poll {dict(counts)}")
                print(text)
            finally:
                if peer is not None:
                    peer.close()
                farm.release([dev])
    finally:
        farm.close()
    print(json.dumps({"benchmark": "profile_poll", "peer": args.peer, "results": out},
                     indent=2))
    print("SUMMARY profile_poll: " + "; ".join(
        f"{fam} {r['exchanges_per_poll']} exchanges, {sum(r['syscalls_per_poll'].values())} "
        f"system calls per poll" for fam, r in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
