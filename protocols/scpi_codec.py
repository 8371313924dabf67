"""Codec of the SCPI-style line family: pure functions, no I/O.

Requests are `HEADER`, `HEADER?` or `HEADER arg[,arg...]`, optionally followed
by `*HH` (XOR of every byte before the asterisk, two upper-case hex digits) and
the request terminator. Replies are one line: the ok word, `ERR <code>,"<text>"`
or comma-separated fields, optionally with the same `*HH`, ending in LF (a CR
before it is dropped). Values cross this module as engineering values: raw
(on the wire) = engineering / scale.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from decimal import Decimal

from protocols.errors import CorruptReply, ProtocolViolation, ValueRejected
from protocols.map_common import Scalar
from protocols.map_scpi import ScpiField

CHECKSUM_MARK = "*"
# `*HH`: the asterisk and two hex digits.
CHECKSUM_SUFFIX_LEN = 3
# Float noise left by the engineering -> raw division (0.3 / 0.1) is cut off at
# this many decimals before any check; far below any device resolution.
RAW_ROUND_DIGITS = 9
# Relative slack when checking a raw value against a decimals or step grid.
GRID_SLACK = 1e-6
# Engineering values read back are cut to this many significant digits when a
# scale is applied, so 3 * 0.1 reads as 0.3.
READ_SIGNIFICANT_DIGITS = 12

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ERROR = re.compile(r"([+-]?[0-9]{1,6}),(.*)")
# Printable ASCII without space, comma, quote, asterisk and semicolon: a bare
# text argument must not change how the device splits the line.
_BARE_TEXT = re.compile(r"[\x21\x23-\x29\x2B\x2D-\x3A\x3C-\x7E]+")
_PRINTABLE = re.compile(r"[ -~]*")


# -- framing ------------------------------------------------------------------------

def checksum(data: bytes) -> int:
    """XOR of every byte."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def request_body(header: str, *, query: bool = False, args: Sequence[str] = ()) -> str:
    """`HEADER?`, `HEADER` or `HEADER a,b`: the line without checksum and terminator."""
    if query:
        return header + "?"
    return f"{header} {','.join(args)}" if args else header


def frame_request(body: str, *, use_checksum: bool, terminator: str = "\n",
                  max_line_length: int | None = None) -> bytes:
    """Encode a request line; ValueRejected when it would be longer than the device takes.

    The length counts everything before the terminator, checksum included.
    """
    try:
        data = body.encode("ascii")
    except UnicodeEncodeError:
        raise ValueRejected(f"request {body!r} is not ASCII") from None
    if use_checksum:
        data += b"*%02X" % checksum(data)
    if max_line_length is not None and len(data) > max_line_length:
        raise ValueRejected(f"request {body!r} is {len(data)} characters long, "
                            f"the device takes at most {max_line_length}")
    return data + terminator.encode("ascii")


def unframe_reply(line: bytes, *, use_checksum: bool) -> str:
    """The text of one reply line: terminator, CR and (verified) `*HH` removed."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    if use_checksum:
        if len(line) < CHECKSUM_SUFFIX_LEN or line[-CHECKSUM_SUFFIX_LEN] != ord(CHECKSUM_MARK):
            raise CorruptReply(f"reply {line!r} has no *HH checksum")
        body, given = line[:-CHECKSUM_SUFFIX_LEN], line[-2:]
        if given != b"%02X" % checksum(body):
            raise CorruptReply(f"reply {line!r}: checksum {given!r} does not match "
                               f"{checksum(body):02X}")
        line = body
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise CorruptReply(f"reply {line!r} is not ASCII") from None
    # Control characters never belong in a reply; passed on they reach logs,
    # records and the operator's terminal.
    if _PRINTABLE.fullmatch(text) is None:
        raise CorruptReply(f"reply {line!r} has non-printable characters")
    return text


# -- reply lines --------------------------------------------------------------------

def parse_error(text: str, prefix: str) -> tuple[int, str] | None:
    """(code, text) of an `ERR <code>,"<text>"` answer; None when the line is no error."""
    if not text.startswith(prefix):
        return None
    rest = text[len(prefix):]
    if rest and rest[0] != " ":
        return None  # a word that merely starts with the prefix
    match = _ERROR.fullmatch(rest[1:])
    if match is None:
        raise CorruptReply(f"error answer {text!r} is not {prefix} <code>,\"<text>\"")
    return int(match.group(1)), unquote(match.group(2))


def split_fields(text: str, separator: str = ",") -> list[str]:
    """Split on `separator` outside double quotes (inside, `""` is a literal quote).

    A space separator takes runs of spaces (and ignores them at both ends)."""
    if separator == " ":
        text = text.strip(" ")
    if '"' not in text:
        return text.split() if separator == " " else text.split(separator)
    tokens: list[str] = []
    start, in_quotes = 0, False
    for i, char in enumerate(text):
        if char == '"':
            in_quotes = not in_quotes  # a doubled quote toggles twice: stays inside
        elif char == separator and not in_quotes:
            tokens.append(text[start:i])
            start = i + 1
    if in_quotes:
        raise CorruptReply(f"unterminated quoted string in {text!r}")
    tokens.append(text[start:])
    if separator == " ":
        tokens = [t for t in tokens if t]
    return tokens


def quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def unquote(token: str) -> str:
    if len(token) < 2 or token[0] != '"' or token[-1] != '"':
        raise CorruptReply(f"{token!r} is not a quoted string")
    inner = token[1:-1]
    if '"' in inner.replace('""', ""):
        raise CorruptReply(f"{token!r} has a stray quote")
    return inner.replace('""', '"')


Converter = Callable[[str], Scalar]


def field_parser(field: ScpiField) -> Converter:
    """A function turning one reply token into the field's engineering value."""
    scale = field.scale
    name = field.name

    def fail(token: str, what: str) -> CorruptReply:
        return CorruptReply(f"field '{name}': {token!r} is not {what}")

    if field.type == "int":
        int_scale = int(scale) if scale.is_integer() else None

        def parse_int(token: str) -> Scalar:
            if not (token.isdigit() and token.isascii()):  # plain digits: the hot path
                token = token.strip()
                if _INT.fullmatch(token) is None:
                    raise fail(token, "an integer")
            try:
                raw = int(token)
            except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
                raise fail(token[:20] + "...", "an integer of sane length") from None
            if int_scale is not None:
                return raw * int_scale
            return _clean(raw * scale)
        return parse_int
    if field.type == "float":
        def parse_float(token: str) -> Scalar:
            token = token.strip()
            if _FLOAT.fullmatch(token) is None:
                raise fail(token, "a number")
            raw = float(token)
            if not math.isfinite(raw):
                raise fail(token, "a finite number")
            return raw if scale == 1.0 else _clean(raw * scale)
        return parse_float
    if field.type == "enum":
        exact = {str(a): a for a in field.allowed or ()}
        folded = {k.upper(): a for k, a in exact.items()}

        def parse_enum(token: str) -> Scalar:
            value = exact.get(token)
            if value is None:  # keywords are case-insensitive
                value = folded.get(token.strip().upper())
            if value is None:
                raise ProtocolViolation(f"field '{name}': {token!r} is not one of "
                                        f"{', '.join(exact)}")
            return value
        return parse_enum
    if field.type == "token":
        def parse_token(token: str) -> Scalar:
            value = field.value_of(token)
            if value is None:
                raise ProtocolViolation(f"field '{name}': {token!r} is not one of "
                                        f"{', '.join((field.tokens or {}).values())}")
            return value
        return parse_token
    if field.type == "quoted":
        return unquote
    if field.type == "date":
        def parse_date(token: str) -> Scalar:
            token = token.strip()
            if _DATE.fullmatch(token) is None or not _valid_date(token):
                raise fail(token, "a date yyyy-mm-dd")
            return token
        return parse_date
    return str.strip  # text


class FieldsParser:
    """Splits a query answer into the typed values of its fields, in order."""

    def __init__(self, fields: Sequence[ScpiField], separator: str = ",") -> None:
        self._converters = [field_parser(f) for f in fields]
        self._separator = separator
        self._max = len(fields)
        # Optional fields may be left off the end of an answer.
        required = [i for i, f in enumerate(fields) if not f.optional]
        self._min = required[-1] + 1 if required else 0

    def parse(self, text: str) -> list[Scalar]:
        tokens = split_fields(text, self._separator)
        if not self._min <= len(tokens) <= self._max:
            want = (str(self._max) if self._min == self._max
                    else f"{self._min}..{self._max}")
            raise CorruptReply(f"answer {text!r} has {len(tokens)} fields, expected {want}")
        return [conv(tok) for conv, tok in zip(self._converters, tokens, strict=False)]


def _valid_date(token: str) -> bool:
    try:
        date.fromisoformat(token)
    except ValueError:
        return False
    return True


def _clean(value: float) -> float:
    return float(f"{value:.{READ_SIGNIFICANT_DIGITS}g}")


# -- arguments ----------------------------------------------------------------------

def encode_args(where: str, fields: Sequence[ScpiField],
                args: Mapping[str, Scalar]) -> list[str]:
    """Argument tokens of a set command, every value checked; ValueRejected names `where`.

    An optional field may be left out only when every field after it is too:
    leaving one out drops its comma, so a later value would land in its place.
    """
    unknown = set(args) - {f.name for f in fields}
    if unknown:
        raise ValueRejected(f"{where}: unknown argument(s) {', '.join(sorted(unknown))} "
                            f"(takes: {', '.join(f.name for f in fields)})")
    tokens: list[str] = []
    omitted: str | None = None
    for field in fields:
        if field.name not in args:
            if not field.optional:
                raise ValueRejected(f"{where}: argument '{field.name}' is missing")
            omitted = omitted or field.name
            continue
        if omitted is not None:
            raise ValueRejected(f"{where}: '{field.name}' given while the optional "
                                f"'{omitted}' before it is left out")
        tokens.append(format_value(where, field, args[field.name]))
    return tokens


def format_value(where: str, field: ScpiField, value: Scalar) -> str:
    """One argument token for an engineering value; ValueRejected if the device would refuse it."""
    def reject(why: str) -> ValueRejected:
        return ValueRejected(f"{where}: {field.name}={value!r} refused: {why}")

    if field.type == "token":
        token = field.token_for(value)
        if token is None:
            raise reject(f"no token stands for it (accepted: {accepted_range(field)})")
        return token

    if field.type in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise reject(f"{field.type} field needs a number")
        if not math.isfinite(value):
            raise reject("not a finite number")
        raw = value if field.scale == 1.0 else round(value / field.scale, RAW_ROUND_DIGITS)
        decimals = 0 if field.type == "int" else field.decimals
        if decimals is not None:
            if not _on_grid(raw, 0.0, 10.0 ** -decimals):
                unit = "a whole number" if decimals == 0 else f"at most {decimals} decimals"
                raise reject(f"raw value {raw:g} needs {unit}")
            raw = round(raw, decimals)
        if field.type == "int":
            raw = int(raw)
        if not field.raw_in_range(raw):
            raise reject(f"outside the accepted range {accepted_range(field)}")
        # A value in `allowed` is accepted as listed; the step grid applies to the range.
        if field.step is not None and not (field.allowed and raw in field.allowed) \
                and not _on_grid(raw, field.min or 0.0, field.step):
            raise reject(f"not on the {field.step:g} step from {field.min or 0:g} "
                         f"(accepted: {accepted_range(field)})")
        if field.type == "int":
            return str(raw)
        if decimals is not None:
            return f"{raw + 0.0:.{decimals}f}"  # + 0.0: never "-0.0"
        return format(Decimal(repr(raw + 0.0)), "f")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise reject(f"{field.type} field needs text")
    if field.type == "enum":
        for choice in field.allowed or ():
            if str(choice) == str(value):
                return str(choice)
        raise reject(f"not one of {accepted_range(field)}")
    token = str(value)
    if not field.raw_in_range(token):
        raise reject(f"outside the accepted values {accepted_range(field)}")
    if field.type == "date":
        if _DATE.fullmatch(token) is None or not _valid_date(token):
            raise reject("not a date yyyy-mm-dd")
        return token
    if field.type == "quoted":
        if _PRINTABLE.fullmatch(token) is None:
            raise reject("quoted text must be printable ASCII")
        return quote(token)
    if _BARE_TEXT.fullmatch(token) is None:
        raise reject("text must be printable ASCII without spaces, commas, quotes, "
                     "asterisks or semicolons")
    return token


def accepted_range(field: ScpiField) -> str:
    """The accepted values in engineering units (the map states them raw)."""
    if field.scale == 1.0:
        text = field.describe_range()
    else:
        scaled = field.model_copy(update={
            "min": None if field.min is None else field.min * field.scale,
            "max": None if field.max is None else field.max * field.scale,
            "allowed": None if field.allowed is None else [
                a * field.scale if isinstance(a, (int, float)) and not isinstance(a, bool)
                else a for a in field.allowed],
        })
        text = scaled.describe_range()
    if field.step is not None:
        text += f", step {field.step * field.scale:g}"
    return f"{text} {field.unit}".rstrip()


def _on_grid(value: float, origin: float, step: float) -> bool:
    n = (value - origin) / step
    return abs(n - round(n)) <= GRID_SLACK * max(1.0, abs(n))
