"""The interface every protocol engine offers the controller.

An engine is owned by one thread (the session worker). Arguments and results
are engineering values (map scale applied); result keys are `entry`,
`entry.bit`, `entry.field` or `entry.field.bit` as the map format defines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from protocols.map_common import Scalar


@dataclass(frozen=True)
class DeviceEvent:
    """An unsolicited report from the device (ES-4 event frames)."""

    kind: str
    fields: dict[str, Scalar]
    received_at: float
    """time.monotonic() when the frame was decoded."""


EventHandler = Callable[[DeviceEvent], None]


class Engine(Protocol):
    def write(self, entry: str, args: Mapping[str, Scalar]) -> dict[str, Scalar]:
        """Write one map entry (register, set/action command, frame command).

        Returns reply fields where the family has them (framed binary), else {}.
        """
        ...

    def read(self, entries: Sequence[str],
             args: Mapping[str, Scalar] | None = None) -> dict[str, Scalar]:
        """Read map entries (registers, queries, frame commands with reply fields)."""
        ...

    def poll_events(self) -> None:
        """Deliver any event frames already received to the handler; never blocks long."""
        ...

    def set_event_handler(self, handler: EventHandler | None) -> None: ...

    def close(self) -> None: ...
