"""`modctl demo`: every shipped device model simulated on a pseudo-terminal, a short session
each, an HTML report of each session, and a paragraph on what was shown and what to try next.

Its files (the records database and the reports) go to a temporary folder that is removed at
the end, unless `--keep DIR` names a folder to keep them in; `--db PATH` keeps the records in
PATH (the reports still follow --keep).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from controller.cli.common import EXIT_OK, EXIT_USAGE, error
from controller.cli.demo_serve import serve_demo
from controller.cli.session_cmd import print_report, run_session
from controller.modality.prescription import build_prescription
from controller.profiles.loader import resolve_profile, shipped_profile_paths
from controller.records.store import RecordStore
from controller.session.report import SessionReport
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
RECORDS_FILE = "records.sqlite3"
TEMP_PREFIX = "modctl-demo-"
KB = 1024

def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="run a short session on each simulated device",
        description="Start every shipped device model simulated on a pseudo-terminal and "
                    "run a short session on each, with the live display, an HTML report of "
                    "each session, and what to try next. Its files are removed at the end "
                    "unless --keep DIR is given.")
    p.add_argument("--db", metavar="PATH",
                   help="records database (default: one in the --keep folder, else a "
                        "temporary one removed at the end)")
    p.add_argument("--keep", metavar="DIR",
                   help="keep the records database and the HTML session reports in DIR "
                        "(created if needed); without it they are removed at the end")
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
    out = sys.stderr if args.json else sys.stdout
    keep = Path(args.keep) if args.keep else None
    if keep is not None:
        try:
            keep.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            error(f"--keep {keep}: cannot create the folder: {exc.strerror or exc}")
            return EXIT_USAGE
    folder = keep or Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    try:
        db = Path(args.db) if args.db else folder / RECORDS_FILE
        reports, written = _sessions(db, folder, out, args.json, kept=keep is not None)
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(_closing(reports, written, db, keep, kept_db=bool(args.db)), file=out)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], default=str))
    return max((r.exit_status for r in reports), default=EXIT_OK)


def _sessions(db: Path, folder: Path, out: TextIO, as_json: bool,
              kept: bool) -> tuple[list[SessionReport], list[Path]]:
    """One session per shipped profile, each with its HTML report in `folder`."""
    live = sys.stdout.isatty() and not as_json
    reports: list[SessionReport] = []
    written: list[Path] = []
    with RecordStore(db) as store:
        starter = SessionStarter(store)
        for pid in shipped_profile_paths():
            profile = resolve_profile(pid).profile
            settings, duration = DEMO_SETTINGS[profile.modality], DEMO_DURATION_S
            rx = build_prescription(profile, settings, duration)
            with SimulatedDevice(profile) as device:
                shown = ", ".join(f"{k}={v}" for k, v in settings.items())
                print(f"== {profile.model} ({profile.modality}) on {device.port}: {shown}, "
                      f"{duration:g} s", file=out)
                report = run_session(starter, profile, rx, device.port, "demo", None, live)
            print_report(report, as_json=False)
            reports.append(report)
            if report.session_id:
                path = _write_report(store, report, folder)
                written.append(path)
                where = f"{path}" if kept else \
                    f"written ({path.stat().st_size // KB} kB HTML; --keep DIR keeps it)"
                print(f"  report: {where}", file=out)
        verified = store.verify_audit()
    print(f"audit trail of the records: {'intact' if verified.ok else 'BROKEN'}", file=out)
    return reports, written


def _write_report(store: RecordStore, report: SessionReport, folder: Path) -> Path:
    """The session's HTML report (the one `modctl records report` makes) in `folder`."""
    from controller.clinic.roles import ClinicSettings  # the report stack: only when used
    from controller.records.html_report import session_report_html
    path = folder / f"session-{report.profile}-{report.session_id}.html"
    path.write_text(session_report_html(store, report.session_id, clinic=ClinicSettings(
        name="modctl demo")), encoding="utf-8")
    return path


def _closing(reports: Sequence[SessionReport], written: Sequence[Path], db: Path,
             keep: Path | None, kept_db: bool) -> str:
    """The paragraph the demo ends with: what was shown, where its files are, what next."""
    done = sum(1 for r in reports if r.outcome == "completed")
    models = ", ".join(r.profile.upper() for r in reports)
    if done == len(reports):
        shown = (f"All {done} demo sessions completed ({models}): each prescription was "
                 "checked against the device's limits, each simulated device identified "
                 "itself, its own watchdog and timer were armed, and the output was started, "
                 "watched, stopped on time by the controller and confirmed off, with every "
                 "step recorded.")
    else:
        shown = (f"Only {done} of {len(reports)} demo sessions completed ({models}); the "
                 "messages above say what ended the others.")
    if keep is not None:
        files = (f"The records ({db}) and the {len(written)} HTML reports are kept in "
                 f"{keep}; list them with `modctl records list --db {db}`.")
    elif kept_db:
        files = (f"The records are in {db} (`modctl records list --db {db}`); the HTML "
                 "reports were temporary and are removed: `--keep DIR` keeps them.")
    else:
        files = ("The records and the HTML reports were written to a temporary folder, now "
                 "removed: `modctl demo --keep DIR` keeps them.")
    nxt = ("Next: run `modctl simulate hc-200` in one terminal and `modctl session run hc-200 "
           "--port PORT --duration 30s --set temperature_c=40` in another (Ctrl-C stops it), "
           "add `--fault silent_at=5` to the simulator to see a device go silent, or run the "
           "clinic's web console with `modctl demo --serve`.")
    return f"\n{shown} {files} {nxt}"
