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
    """An unsolicited report from the device (the framed family's event frames)."""

    kind: str
    fields: dict[str, Scalar]
    received_at: float
    """time.monotonic() when the frame was decoded."""


EventHandler = Callable[[DeviceEvent], None]
InterruptCheck = Callable[[], bool]
"""True when a stop request is waiting: routine I/O must give way (cheap: an Event.is_set)."""


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

    def reads_back(self, entry: str) -> bool:
        """Whether `read([entry])` returns what was last written to `entry` without side
        effects (a holding register, a settable query), so a write can be verified."""
        ...

    def set_interrupt(self, check: InterruptCheck | None) -> None:
        """Let a stop request pre-empt routine I/O (None: never pre-empted).

        With a check set, the engine calls it before every exchange except the
        first one of each read()/write() call, and before every retry of an
        exchange (SCPI: also while waiting for the line to go quiet after a
        timeout). When it returns True the engine raises
        protocols.errors.Interrupted and sends nothing more. So a stop waits at
        most for the one exchange already on the wire. The caller clears the
        check before sending its stop commands, which are never interrupted.
        """
        ...

    def close(self) -> None: ...
