"""Shared pieces of the clinic commands (`devices`, `book`, `serve`): options, errors, the store.

Exit statuses: 0 done, 1 the records database cannot be used, 2 a value typed wrong (usage),
3 refused (a role, a rule, a limit, an overdue calibration; nothing was changed or started).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from controller.cli.common import EXIT_INVALID, EXIT_REJECTED, EXIT_USAGE, UsageError, error
from controller.clinic.bookings import BookingInputError
from controller.clinic.clock import TimeError
from controller.clinic.roles import RoleRefused, RolesError
from controller.modality.prescription import DurationError, SettingsError
from controller.records.clinic_tables import ClinicError
from controller.records.store import DB_ENV, RecordsError, RecordStore, default_db_path

Body = Callable[[argparse.Namespace], int]


def add_clinic_options(p: argparse.ArgumentParser, operator: bool = True) -> None:
    p.add_argument("--db", metavar="PATH",
                   help=f"records database (default: ${DB_ENV} or the per-user data directory)")
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
    return RecordStore(default_db_path(args.db), create=create)


def db_exists(args: argparse.Namespace) -> bool:
    return Path(default_db_path(args.db)).exists()


def refused(message: str) -> int:
    error(f"refused: {message}")
    return EXIT_REJECTED


def clinic_command(body: Body) -> Body:
    """Turn every expected failure into one clear line and its exit status (never a traceback)."""
    def run(args: argparse.Namespace) -> int:
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
