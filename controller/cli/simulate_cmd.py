"""`modctl simulate PROFILE [--fault NAME=VALUE ...]`: a device on a pseudo-terminal."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from controller.cli.common import EXIT_OK, UsageError
from controller.profiles.loader import resolve_profile
from simulator.faults import FAULT_NAMES, FaultError, parse_faults
from simulator.server import SimulatedDevice


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate", help="serve a simulated device on a pseudo-terminal",
        description="Serve a simulated device on a pseudo-terminal. Prints 'port: PATH' "
                    "once ready, then serves until SIGINT or SIGTERM. Fault times are "
                    "seconds of output (from the first output start).",
        epilog="faults: " + ", ".join(FAULT_NAMES))
    p.add_argument("profile", metavar="PROFILE", help="shipped profile id or YAML path")
    p.add_argument("--fault", metavar="NAME=VALUE", action="append", default=[],
                   help="inject a fault (repeatable), e.g. silent_at=2 or contact_lost=1,2")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    profile = resolve_profile(args.profile).profile
    try:
        faults = parse_faults(args.fault)
        device = SimulatedDevice(profile, faults)
    except FaultError as exc:
        raise UsageError(str(exc)) from None
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    with device:
        print(f"port: {device.port}", flush=True)
        print(f"serving {profile.model} ({profile.id}); stop with Ctrl-C", file=sys.stderr)
        while not done.wait(0.5):
            pass
    return EXIT_OK
