"""Treatment room names: which room a clinic service serves and a device is plugged into
(docs/service.md "Several rooms"). Light: the CLI checks a name without the service stack."""

from __future__ import annotations

import os
import re

ROOM_ENV = "MODCTL_ROOM"
ROOM_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._-]{0,38}[A-Za-z0-9._-])?")
"""1-40 letters, digits, spaces, '.', '_' or '-'; starting with a letter or digit, not ending
with a space ("Room 2", "physio-b")."""


def room_from_env() -> str | None:
    """$MODCTL_ROOM, or None when unset or empty."""
    return os.environ.get(ROOM_ENV, "").strip() or None


def room_problem(name: str) -> str | None:
    """Why `name` cannot be a room name, or None."""
    if not ROOM_NAME.fullmatch(name):
        return (f"room name '{name}': use 1-40 letters, digits, spaces, '.', '_' or '-', "
                "starting with a letter or digit")
    return None
