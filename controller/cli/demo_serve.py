"""`modctl demo --serve`: the clinic service on simulated devices, ready to use.

Every shipped model is simulated on a pseudo-terminal, registered (identified, profile file
pinned) and given a demo calibration record; a demo clinician and a demo admin are made
with passwords printed on the terminal; a short demo plan and one booking for now are
added; then `modctl serve` runs on loopback until Ctrl-C, which stops every output as the
service always does. Everything lives in a new records database of its own (a temporary
directory unless `--db`): never the clinic's.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.calibration.gate import real_port
from controller.cli.common import EXIT_OK, UsageError
from controller.cli.devices_cmd import probe
from controller.profiles.loader import resolve_profile, shipped_profile_paths
from controller.records.store import RecordStore
from controller.session.service import ClinicRules
from simulator.server import SimulatedDevice

# Device names by modality, as a clinic might name them.
DEMO_NAMES = {"thermal": "heat-1", "ultrasound": "ultrasound-1", "tens": "tens-1"}
DEMO_ACCOUNTS = {"demo": "clinician", "demo-admin": "admin"}
DEMO_PATIENT = "P-0001"
# A demo calibration is valid this long: the devices are simulated, the record says so.
DEMO_CALIBRATION_DAYS = 30
DEMO_PLAN = """\
plan_format: 1
name: Demo - heat, ultrasound, TENS (1 minute each)
example: true
notes: A demonstration on simulated devices; not a treatment.
devices:
  heat: {profile: hc-200}
  ultrasound: {profile: us-300}
  tens: {profile: es-4}
steps:
  - {name: heat, device: heat, duration: 1m, set: {temperature_c: 39}, pause_after: 10s}
  - {name: ultrasound, device: ultrasound, duration: 1m,
     set: {frequency_mhz: 1, intensity_w_cm2: 1.0, duty_pct: 20}, pause_after: 10s}
  - {name: TENS, device: tens, duration: 1m,
     set: {frequency_hz: 100, pulse_width_us: 200, amplitude_ma: 20}}
"""


def serve_demo(args: argparse.Namespace) -> int:
    # The web stack is imported only here, as in `modctl serve`.
    from controller.service.context import ServiceContext, ServiceOptions
    from controller.service.listen import DEFAULT_IDLE_HOURS, Listen
    from controller.service.server import run_service

    kept = getattr(args, "keep", None)
    folder = Path(kept) if kept else Path(tempfile.mkdtemp(prefix="modctl-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    db = Path(args.db) if args.db else folder / "records.sqlite3"
    if db.exists():
        raise UsageError(f"--db {db}: exists; the demo makes a new records database")
    plans = folder / "plans"
    plans.mkdir()
    (plans / "demo.yaml").write_text(DEMO_PLAN)
    with ExitStack() as stack:
        if not kept:  # a temporary folder goes when the demo ends (after the store closes)
            stack.callback(_remove, folder, args.db is None)
        store = stack.enter_context(RecordStore(db))
        say = print
        for pid in shipped_profile_paths():
            loaded = resolve_profile(pid)
            device = stack.enter_context(SimulatedDevice(loaded.profile))
            name = DEMO_NAMES.get(loaded.profile.modality, pid)
            found = probe(loaded.profile, device.port)
            if isinstance(found, str):
                raise UsageError(f"the simulated {loaded.profile.model}: {found}")
            store.add_device(name, loaded.profile.id, device.port, "demo",
                             serial=found.get("serial"), model=found.get("model"),
                             profile_path=loaded.source_path, profile_sha256=loaded.sha256,
                             port_real=real_port(device.port))
            now = datetime.now(UTC)
            store.add_calibration(device=name, profile=loaded.profile.id, technician="demo",
                                  instrument="none: simulated device (demo record)",
                                  instrument_id="DEMO", before={}, after={}, passed=True,
                                  performed_at=now,
                                  next_due=(now + timedelta(days=DEMO_CALIBRATION_DAYS)).date())
            say(f"device {name}: simulated {loaded.profile.vendor} {loaded.profile.model} on "
                f"{device.port}")
        store.add_booking(devices={"device": "heat-1"}, profile="hc-200", plan=None,
                          settings={"temperature_c": "40"}, modalities=["thermal"],
                          patient=DEMO_PATIENT, starts_at=datetime.now(UTC), duration_s=120.0,
                          actor="demo", min_interval_s=0)
        # The demo's devices are registered without a room, whatever $MODCTL_ROOM says.
        options = ServiceOptions(idle_s=DEFAULT_IDLE_HOURS * 3600, plans_dir=plans, room=None)
        ctx = ServiceContext.build(store, ClinicRules(), options)
        for account, role in DEMO_ACCOUNTS.items():
            password = secrets.token_urlsafe(9)
            ctx.accounts.add(account, role, password, "demo")
            say(f"account {account} ({role}): password {password}")
        say(f"records: {db}; a booking for {DEMO_PATIENT} now on heat-1; plan 'demo'")
        say("open the address below in a browser; Ctrl-C stops every output and ends the demo")
        sys.stdout.flush()
        status = run_service(ctx, Listen("127.0.0.1", args.port), "demo", warn_days=14)
    return EXIT_OK if status == 0 else status


def _remove(folder: Path, had_records: bool) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    if had_records:
        print(f"the demo's records and plan in {folder} were removed (--keep DIR keeps them)")
