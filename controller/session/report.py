"""The session report: what `modctl session run --json` prints as its last line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

from controller.session.exit_codes import EXIT_FAULT, EXIT_OK, EXIT_REJECTED, EXIT_STOPPED
from protocols.map_common import Scalar

EXIT_BY_OUTCOME = {"completed": EXIT_OK, "rejected": EXIT_REJECTED, "aborted": EXIT_STOPPED,
                   "fault": EXIT_FAULT}


# What records and reports hold: plain JSON values.
Json = str | int | float | bool | None | list["Json"] | dict[str, "Json"]


class Snapshot(TypedDict):
    """A running session as a display or the clinic service shows it."""

    state: str
    remaining_s: float | None
    delivered_s: float
    telemetry: dict[str, Scalar]
    dose: dict[str, float]


@dataclass
class TimelineEvent:
    t_s: float
    """Seconds since the session began (monotonic)."""
    kind: str
    """state | command | reply | decision | fault | note"""
    detail: dict[str, Json]


@dataclass
class SessionReport:
    session_id: str
    outcome: str
    reason: str
    profile: str
    device: dict[str, Any]
    prescription: dict[str, Any]
    planned_s: float
    delivered_s: float
    stop_source: str
    dose: dict[str, float]
    events: list[TimelineEvent] = field(default_factory=list)
    stop_confirmed: bool | None = None
    """None when no output was ever commanded."""
    output_started: bool = False
    device_elapsed_s: float | None = None
    """The device's own count of output time, where it reports one."""
    host_delivered_s: float | None = None
    """The controller's measurement, kept when the device's count was recorded instead."""
    profile_file: dict[str, str] = field(default_factory=dict)
    """The profile file the session ran on: id, path and SHA-256."""

    @property
    def exit_status(self) -> int:
        return EXIT_BY_OUTCOME.get(self.outcome, EXIT_FAULT)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str)


def plain(values: Mapping[str, object]) -> dict[str, Json]:
    """JSON-safe copy for records and reports: nested mappings and lists kept."""
    return {str(k): _plain_value(v) for k, v in values.items()}


def _plain_value(value: object) -> Json:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return plain(value)
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    return str(value)
