"""The interface between the pty server and a family's device-side codec."""

from __future__ import annotations

from typing import Protocol

from simulator.model_base import ModelBase


class Endpoint(Protocol):
    model: ModelBase

    def receive(self, data: bytes, now: float) -> list[bytes]:
        """Bytes from the host (any chunking) -> complete reply frames/lines to send."""
        ...

    def tick(self, now: float) -> list[bytes]:
        """Time passes: advance the model; unsolicited frames to send (events)."""
        ...
