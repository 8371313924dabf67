"""Exit statuses and small helpers shared by the CLI commands.

Kept light (no profile, records or clinic imports at module level): every command module
imports it, and `modctl --version` or `profiles list` must start fast (issue 15).
"""

from __future__ import annotations

import sys

from controller.session.exit_codes import (
    EXIT_FAULT,
    EXIT_INTERNAL,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_STOPPED,
    EXIT_USAGE,
)

# An unknown profile, plan, session, device, booking or user: one status for every command
# (docs/cli.md), the same as an invalid file or unusable records, never 0.
EXIT_NOT_FOUND = EXIT_INVALID

__all__ = ["EXIT_FAULT", "EXIT_INTERNAL", "EXIT_INVALID", "EXIT_NOT_FOUND", "EXIT_OK",
           "EXIT_REJECTED", "EXIT_STOPPED", "EXIT_USAGE", "NotFound", "UsageError", "error",
           "patient_option"]


class UsageError(Exception):
    """A command-line value is wrong; the message says which and why."""


class NotFound(Exception):
    """What the command line names does not exist (a session, a device, a booking...); the
    message says what and where. main() reports it and exits EXIT_NOT_FOUND."""


def error(message: str) -> None:
    print(f"modctl: {message}", file=sys.stderr)


def patient_option(text: str | None, option: str = "--patient") -> str | None:
    """A `--patient` value for a command that starts an output: the one pseudonymous-id rule
    (`patient_rules.check_patient_id`), a usage error (exit 2) otherwise; None when not given."""
    if text is None:
        return None
    from controller.clinic.patients import PatientIdError, check_patient_id
    try:
        return check_patient_id(text, option)
    except PatientIdError as exc:
        raise UsageError(str(exc)) from None
