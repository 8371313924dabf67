"""Shared pieces of the clinic commands (`devices`, `book`, `serve`, `users`): options, errors,
the store, and the "not found" checks.

Exit statuses: 0 done, 1 not found (an unknown device, booking, profile, plan or user) or the
records database cannot be used, 2 a value typed wrong (usage), 3 refused (a role, a rule, a
limit, an overdue calibration; nothing was changed or started).

Light at import: the clinic rules, roles and records are imported when a command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from controller.cli.common import (
    EXIT_INVALID,
    EXIT_REJECTED,
    EXIT_USAGE,
    NotFound,
    UsageError,
    error,
)

if TYPE_CHECKING:
    from controller.records.clinic_tables import BookingRow, DeviceRow
    from controller.records.store import RecordStore

Body = Callable[[argparse.Namespace], int]
# As controller.records.store.DB_ENV (not imported here: this module must stay light).
DB_ENV_NAME = "MODCTL_DB"


def add_clinic_options(p: argparse.ArgumentParser, operator: bool = True) -> None:
    p.add_argument("--db", metavar="PATH",
                   help=f"records database (default: ${DB_ENV_NAME} or the per-user data "
                        "directory)")
    if operator:
        p.add_argument("--operator", default="", metavar="NAME",
                       help="who does this (default: the roles file's default_operator, "
                            "else $USER)")


def positive_id(text: str) -> int:
    # ASCII digits only: str.isdigit() and int() also take other scripts' digits ("٣").
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a booking id (a positive number)")
    return int(text)


def open_store(args: argparse.Namespace, create: bool = True) -> RecordStore:
    from controller.records.store import RecordStore, default_db_path
    return RecordStore(default_db_path(args.db), create=create)


def db_exists(args: argparse.Namespace) -> bool:
    from controller.records.store import default_db_path
    target = default_db_path(args.db)
    return not isinstance(target, Path) or target.exists()  # a server: ask it


def refused(message: str) -> int:
    error(f"refused: {message}")
    return EXIT_REJECTED


# -- not found ----------------------------------------------------------------------------------

def require_device(store: RecordStore, name: str) -> DeviceRow:
    """The registered device `name` (removed ones too: the caller says what it may do with
    one); NotFound naming the registered devices otherwise."""
    device = store.device(name)
    if device is None:
        known = ", ".join(d.name for d in store.devices()) or "none registered"
        raise NotFound(f"no device '{name}' is registered (registered: {known})")
    return device


def require_booking(store: RecordStore, booking_id: int) -> BookingRow:
    booking = store.booking(booking_id)
    if booking is None:
        raise NotFound(f"there is no booking {booking_id} (see modctl book list --all)")
    return booking


def require_profile_ref(ref: str, option: str = "--profile") -> None:
    """NotFound unless `ref` is a shipped profile id or an existing file (whether the file is
    a valid profile is the loader's check)."""
    from controller.cli.profiles_cmd import shipped_profile_paths
    shipped = shipped_profile_paths()
    if ref not in shipped and not Path(ref).is_file():
        raise NotFound(f"{option} {ref}: no such profile: not a shipped profile id (shipped: "
                       f"{', '.join(shipped)}) nor a readable file")


def require_plan_ref(ref: str, option: str = "--plan") -> None:
    """NotFound unless `ref` is a shipped preset name or an existing file."""
    from controller.plans.plan import preset_paths
    presets = preset_paths()
    if ref not in presets and not Path(ref).is_file():
        raise NotFound(f"{option} {ref}: no such plan: not a preset (presets: "
                       f"{', '.join(presets)}) nor a readable file")


def clinic_command(body: Body) -> Body:
    """Turn every expected failure into one clear line and its exit status (never a traceback).
    NotFound goes on to main(), which reports it with its status."""
    def run(args: argparse.Namespace) -> int:
        from controller.clinic.bookings import BookingInputError
        from controller.clinic.clock import TimeError
        from controller.clinic.roles import RoleRefused, RolesError
        from controller.modality.prescription import DurationError, SettingsError
        from controller.records.clinic_tables import ClinicError
        from controller.records.store import RecordsError
        try:
            return body(args)
        except (UsageError, TimeError, DurationError, SettingsError, BookingInputError) as exc:
            error(str(exc))
            return EXIT_USAGE
        except (RoleRefused, RolesError, ClinicError) as exc:
            return refused(str(exc))
        except RecordsError as exc:
            error(str(exc))
            return EXIT_INVALID
    return run
