"""The device's identity (model, serial number, firmware) from its `identify` results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from controller.profiles.sections import Identity
from protocols.map_common import Scalar, scalar_text

# Serial words are unsigned 16-bit (a Modbus register each).
WORD_BITS = 16
WORD_MAX = (1 << WORD_BITS) - 1


class IdentityError(ValueError):
    """The identification results cannot give the device's identity."""


class _Identified(Protocol):
    """What device_identity reads of a profile (controller.profiles.model.Profile)."""

    @property
    def id(self) -> str: ...
    @property
    def identity(self) -> Identity | None: ...


def device_identity(profile: _Identified,
                    identify_results: Mapping[str, Scalar]) -> dict[str, str]:
    """{"model", "serial", "firmware"} as text, from the `identify` operation's results.

    Text results are kept as the device reports them (a model name); numbers become
    decimal text (a model register 0x4843 -> "18499", a firmware
    register 105 -> "105"). A `serial` list is 16-bit words, most significant first,
    combined into one number; a `firmware` list is version parts joined with dots.
    Raises IdentityError when the profile has no `identity` section or a result is
    missing or of the wrong kind.
    """
    ident = profile.identity
    if ident is None:
        raise IdentityError(f"profile {profile.id} has no identity section: the device's "
                            "model and serial number cannot be read")

    def get(key: str) -> Scalar:
        if key not in identify_results:
            raise IdentityError(f"identification gave no '{key}'")
        return identify_results[key]

    serial: str
    if isinstance(ident.serial, str):
        serial = scalar_text(get(ident.serial))
    else:
        number = 0
        for key in ident.serial:
            word = get(key)
            if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= WORD_MAX:
                raise IdentityError(f"serial word '{key}' is {word!r}, not an unsigned "
                                    f"{WORD_BITS}-bit number")
            number = (number << WORD_BITS) | word
        serial = str(number)
    firmware = scalar_text(get(ident.firmware)) if isinstance(ident.firmware, str) \
        else ".".join(scalar_text(get(k)) for k in ident.firmware)
    return {"model": scalar_text(get(ident.model)), "serial": serial, "firmware": firmware}
