"""Typed numbers: one grammar, ASCII decimal only, everywhere an operator types a value.

Python's float() and int() accept digits of any script ("٤٠", full-width "４０"),
surrounding spaces, "nan", "inf" and exponents. A value that reaches a patient
must be exactly what the operator meant and what the record shows, so a typed
number is: an optional sign (`-` or `+`), ASCII digits 0-9 with an optional
decimal point and fraction. No spaces, no exponent ("1e3" hides its magnitude
from a reader; nobody types a prescription that way), no thousands separators,
no decimal comma. The result is always finite.
"""

from __future__ import annotations

import math
import re

# re.ASCII keeps [0-9] to ASCII even if someone later writes \d here.
DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
# No device value needs more characters than this; longer text is a mistake (and a
# 5000-digit integer makes int() itself fail).
MAX_NUMBER_TEXT = 24
NOT_A_NUMBER = "is not a number"
NOT_WHOLE = "is not a whole number"
NOT_INTEGER = "is not an integer"


class NumberError(ValueError):
    """A typed value is not a number of the accepted form; the message says why."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what} {reason}")


def parse_decimal(text: str, what: str) -> float:
    """The number `text` spells in plain ASCII decimal; NumberError naming `what` otherwise.

    `what` starts the message, e.g. "temperature_c=40 " → "temperature_c=٤٠ is not a
    number (...)".
    """
    _check_form(text, what, DECIMAL)
    value = float(text)
    if not math.isfinite(value):   # unreachable with MAX_NUMBER_TEXT, kept as a guard
        raise NumberError(what, "is not a finite number")
    return value


def parse_integer(text: str, what: str) -> int:
    """A whole number in plain ASCII decimal ("40", "-3"); "40.0" is not whole."""
    if not INTEGER.fullmatch(text) and DECIMAL.fullmatch(text) \
            and len(text) <= MAX_NUMBER_TEXT:
        raise NumberError(what, NOT_WHOLE)
    _check_form(text, what, INTEGER, NOT_INTEGER)
    return int(text)


def is_decimal(text: str) -> bool:
    """True when `text` is a number of the accepted form."""
    return len(text) <= MAX_NUMBER_TEXT and DECIMAL.fullmatch(text) is not None


def _check_form(text: str, what: str, form: re.Pattern[str],
                plain: str = NOT_A_NUMBER) -> None:
    if len(text) > MAX_NUMBER_TEXT:
        raise NumberError(what, f"{plain}: {len(text)} characters is far beyond any value "
                          f"(at most {MAX_NUMBER_TEXT})")
    if form.fullmatch(text):
        return
    raise NumberError(what, plain + _why(text))


def _why(text: str) -> str:
    """The specific reason, for the forms Python would have accepted."""
    if text != text.strip():
        return " (spaces around a value are not accepted)"
    if any(c.isdigit() and not ("0" <= c <= "9") for c in text):
        return " (only the ASCII digits 0-9 are accepted)"
    stripped = text.lstrip("+-")
    if stripped and (stripped[0] in "eE" or "e" in stripped.lower()) \
            and DECIMAL.fullmatch(stripped.lower().partition("e")[0] or "x"):
        return " (write it out in plain decimal, without an exponent)"
    return ""
