"""The operator's typed text: `NAME=VALUE` settings, a duration, a parameter's value.

ASCII digits only, no spaces, never trimmed or rounded (controller.profiles.numbers):
what is not understood is refused with one sentence naming the text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from controller.modality.prescription_record import Problem
from controller.modality.rules import Value
from controller.profiles.numbers import (
    MAX_NUMBER_TEXT,
    NOT_A_NUMBER,
    NOT_WHOLE,
    NumberError,
    is_decimal,
    parse_decimal,
    parse_integer,
)
from controller.profiles.sections import Parameter

# ASCII digits only (re.ASCII): Python's \d and float() also take "٤٠" and "４０".
_UNIT_DURATION = re.compile(
    r"(?:(?P<h>[0-9]+(?:\.[0-9]+)?)h)?(?:(?P<m>[0-9]+(?:\.[0-9]+)?)m)?"
    r"(?:(?P<s>[0-9]+(?:\.[0-9]+)?)s)?", re.ASCII)
_SECONDS_PER = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_FORMS = "seconds (90, 2.5) or 90s, 5m, 1m30s, 1h"


class DurationError(ValueError):
    """A DUR text that is not a positive duration (a usage error)."""


class SettingsError(ValueError):
    """`NAME=VALUE` settings that cannot be read (a usage error); lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def parse_duration(text: str) -> float:
    """Seconds from `90`, `2.5`, `90s`, `5m`, `1m30s`, `1h` (also `1h30m`, `1.5m`).

    ASCII digits only, no spaces (controller.profiles.numbers); unit letters in either case.
    """
    if is_decimal(text):
        seconds = parse_decimal(text, f"duration '{text}'")
    else:
        t = text.lower() if text.isascii() else text
        match = _UNIT_DURATION.fullmatch(t) if t and len(t) <= MAX_NUMBER_TEXT else None
        if match is None or not any(match.groupdict().values()):
            try:   # the specific reason for spaces and other scripts' digits
                parse_decimal(text, f"duration '{text}'")
            except NumberError as exc:
                if exc.reason != NOT_A_NUMBER:
                    raise DurationError(f"{exc}; give {_DURATION_FORMS}") from None
            raise DurationError(f"duration '{text}' is not understood: give {_DURATION_FORMS}")
        seconds = sum(float(v) * _SECONDS_PER[k] for k, v in match.groupdict().items() if v)
    if not math.isfinite(seconds):
        raise DurationError(f"duration '{text}' is too large")
    if seconds <= 0:
        raise DurationError(f"duration '{text}' must be more than zero")
    return seconds


def parse_settings(pairs: Iterable[str]) -> dict[str, str]:
    """`NAME=VALUE` strings to a dict; raises SettingsError listing every bad one."""
    out: dict[str, str] = {}
    problems: list[str] = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep:
            problems.append(f"'{pair}': expected NAME=VALUE")
        elif not name:
            problems.append(f"'{pair}': the name before '=' is empty")
        elif not value.strip():
            problems.append(f"'{pair}': the value after '=' is empty")
        elif value != value.strip():
            # " 40" is not "40": a typed value is taken exactly as given, never trimmed.
            problems.append(f"'{pair}': the value after '=' has spaces around it")
        elif name in out:
            problems.append(f"'{name}' is set twice ({name}={out[name]} and {name}={value})")
        else:
            out[name] = value
    if problems:
        raise SettingsError(problems)
    return out


def parse_value(name: str, param: Parameter, text: str, shown: str) -> Value | Problem:
    """The operator's text for one parameter as its value, or the Problem with it."""
    if param.type == "choice":
        choices = param.choices or {}
        if text not in choices:
            return Problem(name, text, f"{name}={shown} is not one of the choices: "
                           f"{', '.join(choices)}")
        return text
    if len(text) > MAX_NUMBER_TEXT:
        return Problem(name, text[:20] + "...", f"{name}: a value of {len(text)} characters "
                       f"is far beyond any limit (at most {MAX_NUMBER_TEXT} characters)")
    try:
        if param.type == "integer":
            return parse_integer(text, f"{name}={shown}")
        return parse_decimal(text, f"{name}={shown}")
    except NumberError as exc:
        whole = " (an integer parameter)" if exc.reason == NOT_WHOLE else ""
        return Problem(name, text, f"{exc}{whole}")


def default_text(param: Parameter) -> str:
    """A default as the operator would type it, exactly (repr keeps every digit)."""
    d = param.default
    if isinstance(d, float) and param.type == "integer" and d.is_integer():
        return str(int(d))
    return repr(d) if isinstance(d, float) else str(d)
