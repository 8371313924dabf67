"""`modctl devices add | list | remove`: the clinic's registered devices.

A device is registered once with a name, its profile and its port; bookings, calibrations and
the calibration check before a session all refer to it by name. Removing a device only marks it
out of service: it stays in the records and its name is never reused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from controller import clinic_time
from controller.booking_rules import load_profile
from controller.cli.clinic_common import (
    add_clinic_options,
    clinic_command,
    db_exists,
    open_store,
    refused,
)
from controller.cli.common import EXIT_OK
from controller.clinic_records import DeviceRow
from controller.profile_loader import shipped_profile_paths
from controller.records import RecordStore
from controller.roles import load_roles


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("devices", help="register, list and remove the clinic's devices",
                       description="The clinic's registered devices. Registering and removing "
                                   "need the technician role. Exit status: 0 done, 1 records "
                                   "unusable, 2 usage error, 3 refused.")
    ds = p.add_subparsers(dest="devices_cmd", required=True, metavar="COMMAND")
    add = ds.add_parser("add", help="register a device (technician)",
                        description="Register a device under a name: its profile and port.")
    add.add_argument("name", metavar="NAME", help="a short name, like heat-1 or us-room2")
    add.add_argument("--profile", required=True, metavar="PROFILE",
                     help="shipped profile id (hc-200, us-300, es-4) or a profile file")
    add.add_argument("--port", required=True, metavar="PORT",
                     help="device path (/dev/ttyUSB0, /dev/serial/by-id/...) or pyserial URL")
    add.add_argument("--serial", metavar="TEXT", help="the device's serial number (optional)")
    add_clinic_options(add)
    add.set_defaults(run=clinic_command(_add))
    ls = ds.add_parser("list", help="registered devices and their calibration state",
                       description="Registered devices with their calibration state today.")
    ls.add_argument("--all", action="store_true", help="include removed devices")
    add_clinic_options(ls, operator=False)
    ls.set_defaults(run=clinic_command(_list))
    rm = ds.add_parser("remove", help="take a device out of service (technician)",
                       description="Mark a device removed. It stays in the records; its name "
                                   "is never reused. Refused while it has bookings to run.")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--reason", default="", metavar="TEXT", help="why (kept in the audit)")
    add_clinic_options(rm)
    rm.set_defaults(run=clinic_command(_remove))


def _add(args: argparse.Namespace) -> int:
    operator = load_roles().require("technician", args.operator, "register a device")
    profile = load_profile(args.profile)
    if isinstance(profile, str):
        return refused(f"--profile: {profile}")
    # A shipped profile is kept by id; a file by its absolute path, so any directory works.
    ref = (profile.id if args.profile in shipped_profile_paths()
           else str(Path(args.profile).resolve()))
    with open_store(args) as store:
        device = store.add_device(args.name, ref, args.port.strip(), operator,
                                  serial=(args.serial or "").strip() or None)
        state = _calibration(store, device)
    print(f"registered {device.name}: {profile.id} ({profile.vendor} {profile.model}) on "
          f"{device.port}; calibration: {state}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    if not db_exists(args):
        print("no devices registered")
        return EXIT_OK
    with open_store(args, create=False) as store:
        devices = store.devices(include_removed=args.all)
        rows = [(d.name, d.profile, d.port, d.serial or "-",
                 "removed " + (d.removed_at or "")[:10] if d.removed else _calibration(store, d),
                 d.registered_by) for d in devices]
    if not rows:
        print("no devices registered")
        return EXIT_OK
    table = [("NAME", "PROFILE", "PORT", "SERIAL", "CALIBRATION", "REGISTERED BY"), *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    operator = load_roles().require("technician", args.operator, "remove a device")
    with open_store(args, create=False) as store:
        device = store.remove_device(args.name, operator, args.reason)
    print(f"removed {device.name} from service ({device.profile} on {device.port}); "
          "its records are kept")
    return EXIT_OK


def _calibration(store: RecordStore, device: DeviceRow) -> str:
    """The calibration state today, in a few words."""
    profile = load_profile(device.profile)
    if isinstance(profile, str):
        return "unknown (profile cannot be loaded)"
    if profile.calibration is None:
        return "not required by its profile"
    status = store.calibration_status(device.name, clinic_time.now())
    if status.overdue:
        return f"OVERDUE: {status.reason}"
    return f"ok, next due {status.next_due}"
