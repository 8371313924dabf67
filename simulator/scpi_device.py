"""Device side of the SCPI-style line family, driven by any ScpiMap.

One request line in, exactly one reply line out: the ok word, the queried
fields, or `ERR <code>,"<text>"` (also pushed onto the device error queue).
Headers match keyword by keyword, each in its long or short form, case-blind
(`SOURce:INT`, `sour:intensity`). A request ending in `*HH` is checked and its
reply carries `*HH` too. What a write means and where a query's values come
from is the binding's business; this module only does the wire.

Error codes chosen where the map or the spec leaves room (SCPI classes):
- line longer than `max_line_length`: -100 (command error; it is not parsed);
- empty line, unprintable bytes, unparseable argument, wrong argument count,
  arguments to a query or to a bare action: -102;
- set or action form of a query-only command (`MEAS:POW 3`): -100;
- query form of a command without one (`*RST?`): -400 (query error);
- `needs_service` without service mode, like `refused_while_on` while on: -221.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from controller.profiles.model import Profile
from protocols.map_common import Scalar
from protocols.map_scpi import ScpiCommand, ScpiField, ScpiMap
from simulator.binding import SET, Binding, ReadSource
from simulator.model_base import ModelBase, RefusalKind, Refused

log = logging.getLogger(__name__)

# The device error queue holds this many entries; the oldest is dropped when full.
ERROR_QUEUE_DEPTH = 8
NO_ERROR_TEXT = "No error"
# Codes this module answers with (SCPI numbering, as the US-300 spec lists them).
COMMAND_ERROR = -100
SYNTAX_ERROR = -102
UNDEFINED_HEADER = -113
EXECUTION_ERROR = -200
SETTINGS_CONFLICT = -221
OUT_OF_RANGE = -222
ILLEGAL_VALUE = -224
HARDWARE_MISSING = -241
QUERY_ERROR = -400
# Texts for codes a profile does not list.
DEFAULT_TEXTS = {
    COMMAND_ERROR: "command error", SYNTAX_ERROR: "syntax error",
    UNDEFINED_HEADER: "undefined header", EXECUTION_ERROR: "execution error",
    SETTINGS_CONFLICT: "settings conflict", OUT_OF_RANGE: "data out of range",
    ILLEGAL_VALUE: "illegal parameter value", HARDWARE_MISSING: "hardware missing",
    -350: "checksum error", QUERY_ERROR: "query error",
}
REFUSAL_CODES: dict[RefusalKind, int] = {
    "out_of_range": OUT_OF_RANGE,
    "illegal_value": ILLEGAL_VALUE,
    "invalid_state": SETTINGS_CONFLICT,
    "fault_latched": EXECUTION_ERROR,
    "hardware_missing": HARDWARE_MISSING,
    "lead_off": HARDWARE_MISSING,
    "service_required": SETTINGS_CONFLICT,
    "busy": SETTINGS_CONFLICT,
}
# Float replies: decimals by unit when neither the query nor the set field says
# (the spec shows power as 3.75 and 0.00; temperature 31.2, ERA 5.0).
UNIT_DECIMALS = {"W": 2, "mW": 0}
DEFAULT_DECIMALS = 1
# Relative slack when checking a value against a step or decimals grid.
GRID_SLACK = 1e-6
# Bytes kept while waiting for a terminator beyond the longest line (its CR).
LINE_SLACK = 1

_CHECKSUM = re.compile(rb"\*([0-9A-Fa-f]{2})$")
_PRINTABLE = re.compile(r"[ -~]*")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SHORT = re.compile(r"[A-Z0-9]")


class ScpiError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class _Header:
    name: str
    command: ScpiCommand
    keywords: tuple[tuple[str, str], ...]
    """(LONG, SHORT) upper-cased, one per colon-separated keyword."""
    common: bool
    """A `*` common command (`*IDN`)."""

    def matches(self, common: bool, words: list[str]) -> bool:
        return common == self.common and len(words) == len(self.keywords) and all(
            w.upper() in kw for w, kw in zip(words, self.keywords, strict=True))


def _header_of(name: str, cmd: ScpiCommand) -> _Header:
    words = cmd.header.lstrip("*").split(":")
    keywords = tuple((w.upper(), "".join(_SHORT.findall(w)) or w.upper()) for w in words)
    return _Header(name, cmd, keywords, cmd.header.startswith("*"))


def checksum(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


class ScpiEndpoint:
    """simulator.endpoint.Endpoint for `scpi_line` profiles."""

    def __init__(self, profile: Profile, model: ModelBase, binding: Binding) -> None:
        if not isinstance(profile.protocol, ScpiMap):
            raise TypeError(f"{profile.id}: not a scpi_line profile")
        self.profile = profile
        self.model = model
        self.binding = binding
        self.map: ScpiMap = profile.protocol
        self.errors: deque[tuple[int, str]] = deque(maxlen=ERROR_QUEUE_DEPTH)
        self._headers = [_header_of(n, c) for n, c in self.map.commands.items()]
        self._eol = self.map.request_terminator[-1].encode("ascii")
        self._reply_end = self.map.reply_terminator.encode("ascii")
        self._buf = bytearray()
        self._overlong = False
        self._stored: dict[str, Scalar] = {}
        """Values written to entries no operation binds, for their queries."""

    # -- Endpoint --------------------------------------------------------------------
    def receive(self, data: bytes, now: float) -> list[bytes]:
        replies = []
        self._buf += data
        while (end := self._buf.find(self._eol)) >= 0:
            line = bytes(self._buf[:end])
            del self._buf[:end + 1]
            overlong, self._overlong = self._overlong, False
            replies.append(self._answer(line, overlong, now))
        if len(self._buf) > self.map.max_line_length + LINE_SLACK:
            self._overlong = True  # keep discarding until the terminator; answer then
            self._buf.clear()
        return replies

    def tick(self, now: float) -> list[bytes]:
        self.model.tick(now)
        return []

    # -- one line --------------------------------------------------------------------
    def _answer(self, line: bytes, overlong: bool, now: float) -> bytes:
        if self._eol == b"\n" and line.endswith(b"\r"):
            line = line[:-1]
        mark = _CHECKSUM.search(line)
        checked = mark is not None and mark.start() > 0
        try:
            text = self._checked_text(line, overlong, mark if checked else None)
            reply = self._execute(text, now)
        except ScpiError as exc:
            reply = self._error(exc.code)
        except Exception:  # a simulator bug: answer it, keep serving
            log.exception("%s: request %r failed", self.profile.id, line)
            reply = self._error(EXECUTION_ERROR)
        data = reply.encode("ascii")
        if checked:
            data += b"*%02X" % checksum(data)
        return data + self._reply_end

    def _checked_text(self, line: bytes, overlong: bool, mark: re.Match[bytes] | None) -> str:
        if overlong or len(line) > self.map.max_line_length:
            raise ScpiError(COMMAND_ERROR)
        if mark is not None:
            body = line[:mark.start()]
            # The spec's checksum is two upper-case hex digits: "3e" does not match "3E".
            if mark.group(1) != b"%02X" % checksum(body):
                raise ScpiError(self.map.checksum_error_code)
            line = body
        text = line.decode("ascii", errors="replace")
        if _PRINTABLE.fullmatch(text) is None:
            raise ScpiError(SYNTAX_ERROR)
        return text

    def _error(self, code: int) -> str:
        text = self.map.error_codes.get(code) or DEFAULT_TEXTS.get(code, "error")
        text = text[:1].upper() + text[1:]
        self.errors.append((code, text))
        return f'{self.map.error_prefix} {code},{_quote(text)}'

    def _execute(self, text: str, now: float) -> str:
        header, _, rest = text.strip().partition(" ")
        rest = rest.strip()
        if not header:
            raise ScpiError(SYNTAX_ERROR)
        query = header.endswith("?")
        found = self._lookup(header[:-1] if query else header)
        name, cmd = found.name, found.command
        if query:
            if cmd.query is None:
                raise ScpiError(QUERY_ERROR)
            if rest:
                raise ScpiError(SYNTAX_ERROR)
            self.model.tick(now)
            self.model.kick(now)
            return self._query(name, cmd.query, now)
        if cmd.set is None and not cmd.action:
            raise ScpiError(COMMAND_ERROR)
        if rest and cmd.set is None:
            raise ScpiError(SYNTAX_ERROR)
        args = _parse_args(cmd.set, rest) if rest or not cmd.action else {}
        self.model.tick(now)
        self.model.kick(now)
        return self._write(name, cmd, args, now)

    def _lookup(self, header: str) -> _Header:
        if header.startswith(":"):  # SCPI allows a leading colon (root)
            header = header[1:]
        common = header.startswith("*")
        words = header.lstrip("*").split(":")
        for h in self._headers:
            if h.matches(common, words):
                return h
        raise ScpiError(UNDEFINED_HEADER)

    # -- writes ----------------------------------------------------------------------
    def _write(self, name: str, cmd: ScpiCommand, raw: dict[str, Scalar], now: float) -> str:
        values = {f.name: _check_value(f, raw[f.name]) for f in cmd.set or [] if f.name in raw}
        model = self.model
        if cmd.needs_service and not model.service_mode:
            raise ScpiError(SETTINGS_CONFLICT)
        if cmd.refused_while_on and model.output_on:
            raise ScpiError(SETTINGS_CONFLICT)
        meaning = self.binding.interpret_write(name, values)
        if meaning is None:
            raise ScpiError(ILLEGAL_VALUE)  # a literal no operation uses: wrong PIN
        if meaning.action == SET and not meaning.values:
            self._stored.update({f"{name}.{k}": v for k, v in values.items()})
        else:
            try:
                model.apply(meaning.action, meaning.values, now)
            except Refused as refused:
                raise ScpiError(REFUSAL_CODES.get(refused.kind, EXECUTION_ERROR)) from None
        if meaning.action == "clear_fault":
            self.errors.clear()
        return self.map.ok_reply

    # -- queries ---------------------------------------------------------------------
    def _query(self, name: str, fields: list[ScpiField], now: float) -> str:
        if name == self.map.error_query:
            return self._pop_error(fields)
        cmd = self.map.commands[name]
        tokens = []
        for f in fields:
            key = f"{name}.{f.name}"
            value = self._source_value(self.binding.source(key), key, f, now)
            tokens.append(_format(f, value, _set_field(cmd, f.name)))
        return cmd.reply_separator.join(tokens)

    def _pop_error(self, fields: list[ScpiField]) -> str:
        code, text = self.errors.popleft() if self.errors else (
            self.map.no_error_code, NO_ERROR_TEXT)
        tokens, code_done, text_done = [], False, False
        for f in fields:
            if f.type in ("int", "float") and not code_done:
                tokens.append(str(code))
                code_done = True
            elif f.type in ("quoted", "text") and not text_done:
                tokens.append(_quote(text) if f.type == "quoted" else text)
                text_done = True
            else:
                tokens.append(_format(f, _blank(f), None))
        return self.map.commands[self.map.error_query].reply_separator.join(tokens)

    def _source_value(self, src: ReadSource, key: str, f: ScpiField, now: float) -> Scalar:
        model = self.model
        try:
            if src.kind == "telemetry":
                value = model.telemetry(src.name, src.channel, now)
                return src.inverse.get(str(value), value) if src.inverse else value
            if src.kind == "reading":
                return model.reading(src.name, src.channel)
            if src.kind == "variable":
                return model.value(src.name, src.channel)
        except KeyError:
            return _blank(f)
        if src.kind == "switch" and src.on_off is not None:
            on = model.output_on if src.name == "output" else model.service_mode
            return src.on_off[0] if on else src.on_off[1]
        if src.literal is not None:
            return src.literal
        return self._stored_value(key, f, now)

    def _stored_value(self, key: str, f: ScpiField, now: float) -> Scalar:
        """A result no profile section binds: what was written to it, or a model
        quantity named like its command (`contact` -> `contact_pct`, `bnr`)."""
        if key in self._stored:
            return self._stored[key]
        entry = key.split(".", 1)[0]
        names = [entry, *(t for t in self.profile.telemetry if t.startswith(entry + "_"))]
        for quantity in names:
            try:
                return self.model.telemetry(quantity, None, now)
            except KeyError:
                continue
        return _blank(f)


# -- arguments -------------------------------------------------------------------------
def _parse_args(fields: list[ScpiField] | None, text: str) -> dict[str, Scalar]:
    fields = fields or []
    tokens = _split(text) if text else []
    required = sum(1 for f in fields if not f.optional)
    if not required <= len(tokens) <= len(fields):
        raise ScpiError(SYNTAX_ERROR)
    return {f.name: _parse_token(f, tok.strip()) for f, tok in zip(fields, tokens,
                                                                     strict=False)}


def _split(text: str) -> list[str]:
    tokens, start, quoted = [], 0, False
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            tokens.append(text[start:i])
            start = i + 1
    if quoted:
        raise ScpiError(SYNTAX_ERROR)
    tokens.append(text[start:])
    return tokens


def _parse_token(f: ScpiField, token: str) -> Scalar:
    if not token:
        raise ScpiError(SYNTAX_ERROR)
    if f.type in ("int", "float"):
        if _NUMBER.fullmatch(token) is None:
            raise ScpiError(SYNTAX_ERROR)
        number = float(token)
        if f.type == "float":
            return number
        if not number.is_integer():
            raise ScpiError(OUT_OF_RANGE)  # off the whole-number grid
        return int(number)
    if f.type == "token":
        value = f.value_of(token)
        if value is None:
            raise ScpiError(ILLEGAL_VALUE)  # a word this field does not take
        return value
    if f.type == "quoted":
        if len(token) < 2 or token[0] != '"' or token[-1] != '"' \
                or '"' in token[1:-1].replace('""', ""):
            raise ScpiError(SYNTAX_ERROR)
        return token[1:-1].replace('""', '"')
    if '"' in token or " " in token:
        raise ScpiError(SYNTAX_ERROR)
    if f.type == "date":
        if _DATE.fullmatch(token) is None:
            raise ScpiError(SYNTAX_ERROR)
        try:
            date.fromisoformat(token)
        except ValueError:
            raise ScpiError(ILLEGAL_VALUE) from None
    return token


def _check_value(f: ScpiField, raw: Scalar) -> Scalar:
    """The engineering value of a parsed raw argument; -222 / -224 when refused."""
    if f.type == "token":
        return raw  # _parse_token found the value its token stands for
    if f.type in ("int", "float"):
        assert isinstance(raw, (int, float))
        if not f.raw_in_range(raw):
            raise ScpiError(OUT_OF_RANGE)
        in_allowed = f.allowed is not None and raw in f.allowed
        if f.step is not None and not in_allowed and not _on_grid(raw, f.min or 0.0, f.step):
            raise ScpiError(OUT_OF_RANGE)
        if f.type == "float" and f.decimals is not None \
                and not _on_grid(raw, 0.0, 10.0 ** -f.decimals):
            raise ScpiError(OUT_OF_RANGE)
        return raw if f.scale == 1.0 else raw * f.scale
    if f.type == "enum":
        for choice in f.allowed or ():
            if str(choice).upper() == str(raw).upper():
                return choice
        raise ScpiError(ILLEGAL_VALUE)
    if f.allowed is not None and str(raw) not in {str(a) for a in f.allowed}:
        raise ScpiError(ILLEGAL_VALUE)
    return raw


def _on_grid(value: float, origin: float, step: float) -> bool:
    n = (value - origin) / step
    return abs(n - round(n)) <= GRID_SLACK * max(1.0, abs(n))


# -- replies ---------------------------------------------------------------------------
def _set_field(cmd: ScpiCommand, name: str) -> ScpiField | None:
    return next((f for f in cmd.set or [] if f.name == name), None)


def _decimals(f: ScpiField, set_field: ScpiField | None) -> int:
    for spec in (f, set_field):
        if spec is not None and spec.decimals is not None:
            return spec.decimals
    step = f.step or (set_field.step if set_field is not None else None)
    if step is not None:
        exponent = Decimal(repr(step)).normalize().as_tuple().exponent
        return max(0, -exponent) if isinstance(exponent, int) else DEFAULT_DECIMALS
    return UNIT_DECIMALS.get(f.unit, DEFAULT_DECIMALS)


def _format(f: ScpiField, value: Scalar, set_field: ScpiField | None) -> str:
    if f.type == "token":
        token = f.token_for(value)
        return str(value) if token is None else token
    if f.type in ("int", "float"):
        try:
            number = float(value) / f.scale
        except ValueError:  # a mapped raw word in a numeric field: as it is
            return str(value)
        if f.type == "int":
            return str(round(number))
        text = f"{number:.{_decimals(f, set_field)}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    if f.type == "enum":
        for choice in f.allowed or ():
            if str(choice).upper() == str(value).upper():
                return str(choice)
        return str(value)
    if f.type == "quoted":
        return _quote(str(value))
    return str(value)


def _blank(f: ScpiField) -> Scalar:
    if f.tokens:
        return next(iter(f.tokens))
    if f.type in ("int", "float"):
        return 0
    if f.type == "enum" and f.allowed:
        return f.allowed[0]
    return ""


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'
