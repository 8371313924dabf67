"""Exit statuses and small helpers shared by the CLI commands."""

from __future__ import annotations

import sys

from controller.clinic.patients import PatientIdError, check_patient_id
from controller.session.exit_codes import (
    EXIT_FAULT,
    EXIT_INTERNAL,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_STOPPED,
    EXIT_USAGE,
)

__all__ = ["EXIT_FAULT", "EXIT_INTERNAL", "EXIT_INVALID", "EXIT_OK", "EXIT_REJECTED",
           "EXIT_STOPPED", "EXIT_USAGE", "UsageError", "error", "patient_option"]


class UsageError(Exception):
    """A command-line value is wrong; the message says which and why."""


def error(message: str) -> None:
    print(f"modctl: {message}", file=sys.stderr)


def patient_option(text: str | None, option: str = "--patient") -> str | None:
    """A `--patient` value for a command that starts an output: the one pseudonymous-id rule
    (`patient_rules.check_patient_id`), a usage error (exit 2) otherwise; None when not given."""
    if text is None:
        return None
    try:
        return check_patient_id(text, option)
    except PatientIdError as exc:
        raise UsageError(str(exc)) from None
