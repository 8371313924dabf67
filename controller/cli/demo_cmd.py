"""`modctl demo`: every shipped device model simulated on a pseudo-terminal, a short session
each."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from controller.cli.common import EXIT_OK
from controller.cli.demo_serve import serve_demo
from controller.cli.session_cmd import print_report, run_session
from controller.modality.prescription import build_prescription
from controller.profiles.loader import resolve_profile, shipped_profile_paths
from controller.records.store import RecordStore
from controller.session.service import SessionStarter
from simulator.server import SimulatedDevice

# A short, clinically plausible prescription per modality (the modality contract's parameter
# names); the demo runs one on every shipped profile, in file order.
DEMO_DURATION_S = 6.0
DEMO_SETTINGS: dict[str, dict[str, str]] = {
    "thermal": {"temperature_c": "40"},
    "ultrasound": {"frequency_mhz": "1", "intensity_w_cm2": "1.5", "duty_pct": "20"},
    "tens": {"frequency_hz": "100", "pulse_width_us": "200", "amplitude_ma": "20"},
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="run a short session on each simulated device",
        description="Start every shipped device model simulated on a pseudo-terminal and "
                    "run a short session on each, with the live display and the reports.")
    p.add_argument("--db", metavar="PATH",
                   help="records database (default: a new one in a temporary directory)")
    p.add_argument("--json", action="store_true",
                   help="print all session reports as one JSON list on the last line")
    p.add_argument("--serve", action="store_true",
                   help="instead: run the clinic service (web console and API) on the "
                        "simulated devices, registered and calibrated, with demo accounts "
                        "printed here (docs/service.md)")
    p.add_argument("--port", type=int, default=8470,
                   help="with --serve: the TCP port (default 8470; 0 picks a free one)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if args.serve:
        return serve_demo(args)
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="modctl-demo-")) / \
        "records.sqlite3"
    live = sys.stdout.isatty() and not args.json
    reports = []
    status = EXIT_OK
    with RecordStore(db) as store:
        starter = SessionStarter(store)
        for pid in shipped_profile_paths():
            profile = resolve_profile(pid).profile
            settings, duration = DEMO_SETTINGS[profile.modality], DEMO_DURATION_S
            rx = build_prescription(profile, settings, duration)
            with SimulatedDevice(profile) as device:
                shown = ", ".join(f"{k}={v}" for k, v in settings.items())
                print(f"== {profile.model} ({profile.modality}) on {device.port}: {shown}, "
                      f"{duration:g} s", file=sys.stderr if args.json else sys.stdout)
                report = run_session(starter, profile, rx, device.port, "demo", None, live)
            print_report(report, as_json=False)
            reports.append(report)
            status = max(status, report.exit_status)
        verified = store.verify_audit()
    out = sys.stderr if args.json else sys.stdout
    print(f"records: {db} (audit trail {'intact' if verified.ok else 'BROKEN'}); "
          f"see `modctl records list --db {db}`", file=out)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], default=str))
    return status
