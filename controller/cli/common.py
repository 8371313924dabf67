"""Exit statuses and small helpers shared by the CLI commands."""

from __future__ import annotations

import sys

from controller.exit_codes import (
    EXIT_FAULT,
    EXIT_INTERNAL,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_STOPPED,
    EXIT_USAGE,
)

__all__ = ["EXIT_FAULT", "EXIT_INTERNAL", "EXIT_INVALID", "EXIT_OK", "EXIT_REJECTED",
           "EXIT_STOPPED", "EXIT_USAGE", "UsageError", "error"]


class UsageError(Exception):
    """A command-line value is wrong; the message says which and why."""


def error(message: str) -> None:
    print(f"modctl: {message}", file=sys.stderr)
