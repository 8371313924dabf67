"""`modctl serve`: the clinic service (controller/service/); `--once` prints the day's reminders.

`serve(reminders, stop)` below is the reminders loop on its own (tests, and a site that runs
reminders without the HTTP service).

Reminders (booking due, booking overdue, calibration coming due or overdue) are printed to
stdout with a timestamp and appended to the audit trail as notes. APScheduler wakes the server
at each booking's time and overdue time; a periodic pass picks up bookings made meanwhile, the
next day, and the daily calibration check. Nothing here ever starts an output.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from controller.cli.clinic_common import add_clinic_options, clinic_command, open_store
from controller.cli.common import EXIT_OK, UsageError
from controller.cli.session_cmd import clinic_rules
from controller.clinic import clock as clinic_time
from controller.clinic.reminders import Reminders
from controller.clinic.roles import load_roles
from controller.service.listen import (
    DEFAULT_HOST,
    DEFAULT_IDLE_HOURS,
    DEFAULT_PORT,
    Listen,
    listen_problem,
)
from controller.session.scheduling import every, make_scheduler

# How often the server looks again for new bookings and the day's calibration state: a booking
# made for "now" is reminded within this, and so is the first check of a new day.
SYNC_PERIOD_S = 60.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the clinic service (HTTP API, every device)",
                       description="Run the clinic service: every registered device held and "
                                   "watched, sessions started and stopped over an "
                                   "authenticated HTTP API (docs/service.md), and the day's "
                                   "reminders (booking due or overdue, calibration due). "
                                   "SIGTERM or Ctrl-C stops every running output (confirmed "
                                   "and recorded) before it exits.")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--tls-cert", metavar="PEM", help="TLS certificate (needed off loopback)")
    p.add_argument("--tls-key", metavar="PEM", help="TLS private key")
    p.add_argument("--insecure-http", action="store_true",
                   help="serve plain HTTP on a non-loopback address (logged, shown on every "
                        "page)")
    p.add_argument("--idle-hours", type=float, default=DEFAULT_IDLE_HOURS,
                   help="a login expires after this many hours without a request "
                        f"(default {DEFAULT_IDLE_HOURS:g})")
    p.add_argument("--plans", metavar="DIR",
                   help="a folder of reviewed plan files the API may run by name (besides "
                        "the shipped presets)")
    p.add_argument("--room", metavar="NAME",
                   help="the treatment room this service serves (default $MODCTL_ROOM): it "
                        "holds only the devices registered in that room; required on a "
                        "database several rooms share (docs/service.md)")
    p.add_argument("--once", action="store_true",
                   help="print the reminders that apply now and exit (no HTTP service)")
    add_clinic_options(p)
    p.set_defaults(run=clinic_command(_serve))


def _serve(args: argparse.Namespace) -> int:
    config = load_roles()
    actor = config.resolve(args.operator)
    if not args.once:
        listen = Listen(args.host, args.port, args.tls_cert, args.tls_key, args.insecure_http)
        problem = listen_problem(listen)
        if problem is None and not 0 <= args.port <= 65535:
            problem = f"--port {args.port} is not a TCP port (0-65535)"
        if problem is None and not args.idle_hours > 0:
            problem = "--idle-hours must be more than 0"
        if problem is None and args.plans and not Path(args.plans).is_dir():
            problem = f"--plans {args.plans}: no such folder"
        if problem is None and args.room is not None:
            from controller.clinic.room_names import room_problem
            problem = room_problem(args.room)
            if problem:
                problem = f"--room: {problem}"
        if problem is not None:
            raise UsageError(problem)
    with open_store(args) as store:
        if not args.once:
            # The web stack is imported only here: other commands start without it.
            from controller.service.context import ServiceContext, ServiceOptions
            from controller.service.server import run_service
            # Without --room, ServiceOptions takes $MODCTL_ROOM.
            room = {"room": args.room} if args.room is not None else {}
            options = ServiceOptions(idle_s=args.idle_hours * 3600,
                                     insecure_http=args.insecure_http,
                                     plans_dir=Path(args.plans) if args.plans else None,
                                     **room)
            ctx = ServiceContext.build(store, clinic_rules(config), options)
            return run_service(ctx, listen, actor, config.clinic.calibration_warning_days)
        reminders = Reminders(store, actor, config.clinic.calibration_warning_days)
        if reminders.check() == 0:
            print("no reminders")
        return EXIT_OK


def serve(reminders: Reminders, stop: threading.Event) -> int:
    """Run until `stop` is set (SIGINT/SIGTERM set it when called from the main thread)."""
    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    main = threading.current_thread() is threading.main_thread()
    previous = ({s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
                if main else {})
    scheduler = make_scheduler()
    try:
        print(f"{clinic_time.stamp(reminders.clock())}  serving reminders for "
              f"{reminders.store.path} (Ctrl-C to stop)", flush=True)
        reminders.sync(scheduler)
        every(scheduler, SYNC_PERIOD_S, lambda: reminders.sync(scheduler), "reminders sync")
        scheduler.start()
        while not stop.wait(0.5):
            pass
    finally:
        scheduler.shutdown(wait=False)
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"{clinic_time.stamp(reminders.clock())}  stopped", file=sys.stderr)
    return EXIT_OK
