"""`modctl devices add | pin | list | remove`: the clinic's registered devices.

A device is registered once with a name, its profile and its port; bookings, calibrations and
the calibration check before a session all refer to it by name. Registration identifies the
device over its port and keeps what it reports (model, serial number), the port's real path,
and the profile file's path and SHA-256: the calibration gate recognises the device by any of
them, and a changed profile file is refused until a technician registers it again (`pin`).
Removing a device only marks it out of service: it stays in the records and its name is never
reused.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from controller.cli.clinic_common import (
    add_clinic_options,
    clinic_command,
    db_exists,
    open_store,
    refused,
    require_device,
    require_profile_ref,
)
from controller.cli.common import EXIT_OK, UsageError
from controller.cli.table import print_table

if TYPE_CHECKING:
    from controller.profiles.model import Profile
    from controller.records.clinic_tables import DeviceRow
    from controller.records.store import RecordStore

# Profiles, the device link and the calibration gate are imported by the subcommands that use
# them: `devices list` and completion start without the protocol stacks.


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
                     help="shipped profile id (modctl profiles list) or a profile file")
    add.add_argument("--port", required=True, metavar="PORT",
                     help="device path (/dev/ttyUSB0, /dev/serial/by-id/...) or pyserial URL")
    add.add_argument("--serial", metavar="TEXT",
                     help="the device's serial number, with --no-probe (otherwise read from "
                          "the device)")
    add.add_argument("--room", metavar="NAME",
                     help="the treatment room whose PC the device is plugged into (default "
                          "$MODCTL_ROOM; none on a one-PC clinic): only that room's clinic "
                          "service holds it")
    add.add_argument("--no-probe", action="store_true",
                     help="register without identifying the device now (it is then known by "
                          "name and port only, not by its serial number)")
    add_clinic_options(add)
    add.set_defaults(run=clinic_command(_add))
    pin = ds.add_parser("pin", help="register a device again after its profile file or port "
                                    "changed (technician)",
                        description="Identify the device again and pin its profile file as it "
                                    "is now (path and SHA-256). Needed after a technician "
                                    "checked a changed profile file.")
    pin.add_argument("name", metavar="NAME", help="a registered device")
    pin.add_argument("--port", metavar="PORT", help="its port now (default: as registered)")
    pin.add_argument("--no-probe", action="store_true",
                     help="do not identify the device (keep the identity registered before)")
    add_clinic_options(pin)
    pin.set_defaults(run=clinic_command(_pin))
    ls = ds.add_parser("list", help="registered devices and their calibration state",
                       description="Registered devices with their calibration state today.")
    ls.add_argument("--all", action="store_true", help="include removed devices")
    add_clinic_options(ls, operator=False)
    ls.set_defaults(run=clinic_command(_list))
    rm = ds.add_parser("remove", help="take a device out of service (technician)",
                       description="Mark a device removed. It stays in the records; its name "
                                   "is never reused. Refused while it has bookings to run.")
    rm.add_argument("name", metavar="NAME", help="a registered device")
    rm.add_argument("--reason", default="", metavar="TEXT", help="why (kept in the audit)")
    add_clinic_options(rm)
    rm.set_defaults(run=clinic_command(_remove))


def _add(args: argparse.Namespace) -> int:
    from controller.calibration.gate import real_port
    from controller.clinic.roles import load_roles
    from controller.profiles.loader import ProfileError, resolve_profile, shipped_profile_paths
    operator = load_roles().require("technician", args.operator, "register a device")
    require_profile_ref(args.profile)
    try:
        loaded = resolve_profile(args.profile)
    except ProfileError as exc:
        return refused(f"--profile: profile {args.profile}: {'; '.join(exc.problems)}")
    profile = loaded.profile
    if args.serial and not args.no_probe:
        raise UsageError("--serial goes with --no-probe: otherwise the device reports it")
    from controller.clinic.room_names import room_from_env, room_problem
    room = args.room.strip() if args.room is not None else room_from_env()
    if room is not None and (problem := room_problem(room)):
        raise UsageError(f"--room: {problem}")
    port = args.port.strip()
    identity = {"model": None, "serial": (args.serial or "").strip() or None}
    if not args.no_probe:
        found = probe(loaded.profile, port)
        if isinstance(found, str):
            return refused(found)
        identity = {"model": found["model"], "serial": found["serial"]}
    # A shipped profile is kept by id; a file by its absolute path, so any directory works.
    ref = (profile.id if args.profile in shipped_profile_paths()
           else str(Path(args.profile).resolve()))
    with open_store(args) as store:
        device = store.add_device(args.name, ref, port, operator,
                                  serial=identity["serial"], model=identity["model"],
                                  profile_path=loaded.source_path, profile_sha256=loaded.sha256,
                                  port_real=real_port(port), room=room)
        state = _calibration(store, device)
    who = f"serial {device.serial}" if device.serial else "identity not checked"
    where = f" in room {device.room}" if device.room else ""
    print(f"registered {device.name}: {profile.id} ({profile.vendor} {profile.model}, {who}) "
          f"on {device.port}{where}; profile file {loaded.source_path} (SHA-256 "
          f"{loaded.sha256[:12]}...); calibration: {state}")
    return EXIT_OK


def _pin(args: argparse.Namespace) -> int:
    from controller.calibration.gate import real_port
    from controller.clinic.roles import load_roles
    from controller.profiles.loader import ProfileError, load_profile_file, resolve_profile
    operator = load_roles().require("technician", args.operator, "register a device again")
    with open_store(args, create=False) as store:
        device = require_device(store, args.name)
        if device.removed:
            return refused(f"device '{args.name}' was removed from service; it cannot be "
                           "registered again")
        try:
            loaded = (load_profile_file(device.profile_path)
                      if device.profile_path and Path(device.profile_path).is_file()
                      else resolve_profile(device.profile))
        except ProfileError as exc:
            return refused(f"profile {device.profile}: {'; '.join(exc.problems)}")
        port = (args.port or device.port).strip()
        model, serial = device.model, device.serial
        if not args.no_probe:
            found = probe(loaded.profile, port)
            if isinstance(found, str):
                return refused(found)
            model, serial = found["model"], found["serial"]
        pinned = store.pin_device(args.name, profile=device.profile,
                                  profile_path=loaded.source_path,
                                  profile_sha256=loaded.sha256, serial=serial, model=model,
                                  port=port, port_real=real_port(port), actor=operator)
    print(f"pinned {pinned.name}: profile file {loaded.source_path} (SHA-256 "
          f"{loaded.sha256[:12]}...), serial {pinned.serial or 'not checked'}, on {pinned.port}")
    return EXIT_OK


def probe(profile: Profile, port: str) -> dict[str, str] | str:
    """Identify the device on `port` without switching anything on: its identity, or why not.

    Only the profile's `identify` operation runs (reads)."""
    from controller.device.idle import idle_variables
    from controller.device.link import DeviceLink, identify
    from controller.profiles.model import IdentityError
    from protocols.errors import ProtocolError
    try:
        link = DeviceLink.open(profile, port)
    except ProtocolError as exc:
        text = str(exc)
        return text if text.startswith("cannot open") else f"cannot open {port}: {text}"
    try:
        return identify(link, idle_variables(profile)[0]).identity
    except (ProtocolError, IdentityError) as exc:
        return (f"the device on {port} did not identify as the {profile.model} of the profile: "
                f"{exc} (connect "
                "it and try again, or register it with --no-probe)")
    finally:
        link.close()


def _list(args: argparse.Namespace) -> int:
    if not db_exists(args):
        print("no devices registered")
        return EXIT_OK
    with open_store(args, create=False) as store:
        devices = store.devices(include_removed=args.all)
        rooms = any(d.room for d in devices)
        rows = [(d.name, *((d.room or "-",) if rooms else ()), d.profile, d.port,
                 d.serial or "-",
                 "removed " + (d.removed_at or "")[:10] if d.removed else _calibration(store, d),
                 d.registered_by) for d in devices]
    if not rows:
        print("no devices registered")
        return EXIT_OK
    print_table(("NAME", *(("ROOM",) if rooms else ()), "PROFILE", "PORT", "SERIAL",
                 "CALIBRATION", "REGISTERED BY"), rows)
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    from controller.clinic.roles import load_roles
    operator = load_roles().require("technician", args.operator, "remove a device")
    with open_store(args, create=False) as store:
        require_device(store, args.name)
        device = store.remove_device(args.name, operator, args.reason)
    print(f"removed {device.name} from service ({device.profile} on {device.port}); "
          "its records are kept")
    return EXIT_OK


def _calibration(store: RecordStore, device: DeviceRow) -> str:
    """The calibration state today, in a few words."""
    from controller.clinic import clock as clinic_time
    from controller.clinic.bookings import load_profile
    profile = load_profile(device.profile)
    if isinstance(profile, str):
        return "unknown (profile cannot be loaded)"
    if profile.calibration is None:
        return "not required by its profile"
    status = store.calibration_status(device.name, clinic_time.now())
    if status.overdue:
        return f"OVERDUE: {status.reason}"
    return f"ok, next due {status.next_due}"
