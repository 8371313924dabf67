"""The interface every protocol engine offers the controller.

An engine is owned by one thread (the session worker). Arguments and results
are engineering values (map scale applied); result keys are `entry`,
`entry.bit`, `entry.field` or `entry.field.bit` as the map format defines.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from protocols.errors import CorruptReply, LinkTimeout, ProtocolError
from protocols.map_common import Scalar

# How an engine names what is on the other end of its port in the one sentence a failed
# exchange ends with, until the controller tells it the model (`Engine.device`).
DEFAULT_DEVICE = "the device"
# Below this a timeout reads best in milliseconds ("50 ms"), from it in seconds ("1.5 s").
MS_BELOW_S = 1.0


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


def timeout_text(seconds: float) -> str:
    """`50 ms`, `150 ms`, `1.5 s`: a reply timeout as a technician reads it."""
    if seconds < MS_BELOW_S:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds:g} s"


def gave_up(last: ProtocolError, device: str, port: str, attempts: int,
            timeout_s: float, entry: str = "") -> str:
    """The one sentence for an exchange that failed every attempt, by how the last one
    failed: `no reply from the HC-200 on /dev/ttyUSB0 after 4 attempts (timeout 50 ms
    each)`. A garbled or unexpected last reply adds what was wrong with it where that reads
    as words (`reply from unit 2, expected unit 1`); the bytes of each attempt go to the
    DEBUG log only."""
    tries = f"after {attempts} attempt{'s' if attempts != 1 else ''} " \
            f"(timeout {timeout_text(timeout_s)} each)"
    # What was asked, for whoever reads the log next to the device's manual.
    asked = f", asking for {entry}" if entry else ""
    if isinstance(last, LinkTimeout):
        return f"no reply from {device} on {port} {tries}{asked}"
    what = "garbled (bad checksum or cut short)" if isinstance(last, CorruptReply) else \
        "not answers to what was asked"
    detail = _in_words(str(last), entry)
    return f"no valid reply from {device} on {port} {tries}{asked}: the replies were " \
        f"{what}" + (f"; the last: {detail}" if detail else "")


def _in_words(message: str, entry: str) -> str:
    """An engine's or codec's message without its entry label and without bytes; '' when
    what is left is not plain words (a repr of the garbage received)."""
    for label in (f"{entry}: ", f"modbus {entry}: "):
        if entry and message.startswith(label):
            message = message[len(label):]
    message = _HEX_BYTES.sub("", message).rstrip(" :")
    return "" if not message or any(q in message for q in "'\"") else message


# Runs of bytes in hex ("01 04 02 01 74"), with the colon that introduces them.
_HEX_BYTES = re.compile(r":?\s*\b[0-9a-fA-F]{2}(?: [0-9a-fA-F]{2})+\b")


class Engine(Protocol):
    device: str
    """What is on the other end, for messages (`the HC-200`); DEFAULT_DEVICE until the
    controller sets it."""

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
