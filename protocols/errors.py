"""The exceptions a protocol engine raises; the controller decides what each means.

Every error names the map entry involved so a record can say exactly which
exchange failed.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of everything an engine or the transport raises."""


class ValueRejected(ProtocolError):
    """The host refused to send a value the map says the device does not accept.

    Nothing was sent. Raised before encoding, never clipped.
    """


class LinkLost(ProtocolError):
    """The port is closed, unplugged or otherwise unusable."""


class PortBusy(ProtocolError):
    """Another controller holds the port: one controller per device. Nothing was sent."""


class Interrupted(ProtocolError):
    """A stop request pre-empted routine I/O; nothing was sent after the check.

    `after` is the failure that the pre-empted retry would have answered, if any: a
    caller that pre-empts at a deadline still learns that the link was failing."""

    def __init__(self, message: str, after: ProtocolError | None = None) -> None:
        super().__init__(message)
        self.after = after


class LinkTimeout(ProtocolError):
    """No complete, valid reply within the timeout, after every retry."""


class CorruptReply(ProtocolError):
    """A reply arrived but failed its checksum or could not be parsed."""


class ProtocolViolation(ProtocolError):
    """A well-formed reply that does not answer the request (address, code, length)."""


class DeviceRefused(ProtocolError):
    """The device answered with an error: Modbus exception, ERR line or status byte."""

    def __init__(self, entry: str, code: int, text: str) -> None:
        self.entry = entry
        self.code = code
        self.text = text
        super().__init__(f"{entry}: device refused with code {code} ({text})")
