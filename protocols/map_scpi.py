"""Map format of the SCPI-style ASCII line family."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from protocols.map_common import Identifier, ResultKind, StrictModel, ValueSpec

FieldType = Literal["int", "float", "enum", "text", "quoted", "date", "token"]
# Field types whose value is a number once read (a token stands for a number).
NUMERIC_TYPES = frozenset({"int", "float", "token"})
# Reply field separators a query may declare.
Separator = Literal[",", ";", " "]
# A token is sent bare: printable ASCII without space, comma, quote, asterisk or
# semicolon, so it can never change how a line is split (colons are fine: "1:4").
TOKEN_PATTERN = re.compile(r"[\x21\x23-\x29\x2B\x2D-\x3A\x3C-\x7E]+")
# Keys that describe a numeric range; a token field's values are its tokens instead.
_NOT_FOR_TOKENS = ("min", "max", "allowed", "step", "decimals")
# A header is colon-separated keywords; the upper-case part of each is its short form.
HEADER_PATTERN = r"^\*?[A-Za-z][A-Za-z0-9]*(:[A-Za-z][A-Za-z0-9]*)*$"


class ScpiField(ValueSpec):
    """One comma-separated field of an argument list or a reply."""

    name: Identifier
    type: FieldType
    decimals: int | None = Field(None, ge=0, le=6)
    """Digits after the point when the host formats a float."""
    step: float | None = Field(None, gt=0)
    optional: bool = False
    tokens: dict[int | float, str] | None = None
    """For `type: token`: the word sent and read for each value, `{100: CW, 20: "1:4"}`.
    Used both ways, for set arguments and for replies. Quote every token that YAML
    could read as something else ("1:4", "ON", "1e3")."""

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens_are_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, token in value.items():
                if not isinstance(token, str):
                    raise ValueError(
                        f"the token for {key!r} reads as {token!r} ({type(token).__name__}), "
                        "not text: quote every token, e.g. \"1:4\" (YAML 1.1 reads an "
                        "unquoted 1:4 as the number 64, and ON as true)")
                if isinstance(key, bool) or not isinstance(key, (int, float)):
                    raise ValueError(f"the value {key!r} of token {token!r} must be a number "
                                     "(the engineering value the token stands for)")
        return value

    @model_validator(mode="after")
    def _enum_has_values(self) -> ScpiField:
        if self.type == "enum" and not self.allowed:
            raise ValueError(f"enum field '{self.name}' needs 'allowed' values")
        if (self.type == "token") != (self.tokens is not None):
            raise ValueError(f"field '{self.name}': 'tokens' is required for token fields "
                             "and only for them")
        if self.tokens is not None:
            given = [k for k in _NOT_FOR_TOKENS if getattr(self, k) is not None]
            if given or self.scale != 1.0:
                raise ValueError(f"field '{self.name}': a token field takes its values "
                                 f"from 'tokens'; drop {', '.join(given) or 'scale'}")
            if not self.tokens:
                raise ValueError(f"field '{self.name}': 'tokens' must list at least one")
            seen: dict[str, str] = {}
            for token in self.tokens.values():
                if TOKEN_PATTERN.fullmatch(token) is None:
                    raise ValueError(f"field '{self.name}': token {token!r} must be printable "
                                     "ASCII without spaces, commas, quotes, asterisks or "
                                     "semicolons")
                if token.upper() in seen:
                    raise ValueError(f"field '{self.name}': tokens {seen[token.upper()]!r} "
                                     f"and {token!r} are the same word (tokens are "
                                     "case-blind)")
                seen[token.upper()] = token
        return self

    def token_for(self, value: Any) -> str | None:
        """The token that stands for a value (None: no token does)."""
        if self.tokens is None or isinstance(value, bool) \
                or not isinstance(value, (int, float)):
            return None
        return next((t for v, t in self.tokens.items() if v == value), None)

    def value_of(self, token: str) -> int | float | None:
        """The value a token stands for, case-blind (None: not a token of this field)."""
        wanted = token.strip().upper()
        return next((v for v, t in (self.tokens or {}).items() if t.upper() == wanted), None)

    def raw_in_range(self, raw: Any) -> bool:
        if self.tokens is not None:
            return self.token_for(raw) is not None
        return super().raw_in_range(raw)

    def describe_range(self) -> str:
        if self.tokens is not None:
            return "one of " + ", ".join(f"{v:g} ({t})" for v, t in self.tokens.items())
        return super().describe_range()


class ScpiCommand(StrictModel):
    """One command header and the forms the device accepts for it."""

    header: str = Field(pattern=HEADER_PATTERN)
    description: str = ""
    action: bool = False
    """The bare header is a command of its own (`*RST`, `ABORt`)."""
    set: list[ScpiField] | None = None
    """`HEADER arg[,arg...]` is accepted, with these argument fields."""
    query: list[ScpiField] | None = None
    """`HEADER?` is accepted and answers these fields, in this order."""
    reply_separator: Separator = ","
    """What separates the fields of the query's answer; `" "` takes runs of spaces."""
    needs_service: bool = False
    refused_while_on: bool = False

    @model_validator(mode="after")
    def _has_a_form(self) -> ScpiCommand:
        if not (self.action or self.set is not None or self.query is not None):
            raise ValueError(f"command '{self.header}' has no form: "
                             "give at least one of action, set, query")
        if self.set is not None and not self.set:
            raise ValueError(f"'set' of '{self.header}' must list its argument fields")
        if self.query is not None and not self.query:
            raise ValueError(f"'query' of '{self.header}' must list its reply fields")
        return self

    @property
    def short_header(self) -> str:
        """The abbreviated header: the upper-case part of each keyword."""
        parts = []
        for keyword in self.header.lstrip("*").split(":"):
            short = "".join(re.findall(r"[A-Z0-9]", keyword)) or keyword.upper()
            parts.append(short)
        return ("*" if self.header.startswith("*") else "") + ":".join(parts)


class ScpiMap(StrictModel):
    family: Literal["scpi_line"]
    request_terminator: str = "\n"
    reply_terminator: str = "\r\n"
    max_line_length: int = Field(128, ge=8, le=4096)
    use_checksum: bool = True
    """The host appends `*HH` to every request and requires it on every reply."""
    use_short_form: bool = False
    """The host sends the short form of headers (`SOUR:INT`) instead of the long."""
    ok_reply: str = "OK"
    error_prefix: str = "ERR"
    error_query: Identifier
    """Command that pops the device error queue."""
    no_error_code: int = 0
    checksum_error_code: int = -350
    error_codes: dict[int, str]
    commands: dict[Identifier, ScpiCommand]

    @model_validator(mode="after")
    def _error_query_exists(self) -> ScpiMap:
        cmd = self.commands.get(self.error_query)
        if cmd is None or cmd.query is None:
            raise ValueError(f"error_query '{self.error_query}' must name a command "
                             "with a query form")
        headers: dict[str, str] = {}
        for name, command in self.commands.items():
            key = command.header.upper()
            if key in headers:
                raise ValueError(f"commands '{headers[key]}' and '{name}' share header "
                                 f"{command.header}")
            headers[key] = name
        return self

    def entry_names(self) -> set[str]:
        return set(self.commands)

    def result_keys(self, name: str) -> set[str]:
        cmd = self.commands.get(name)
        if cmd is None or cmd.query is None:
            return set()
        return {f"{name}.{f.name}" for f in cmd.query}

    def result_kind(self, key: str) -> ResultKind | None:
        entry, _, name = key.partition(".")
        cmd = self.commands.get(entry)
        field = next((f for f in cmd.query or [] if f.name == name), None) if cmd else None
        if field is None:
            return None
        return "number" if field.type in NUMERIC_TYPES else "text"

    def arg_spec(self, entry: str, arg: str) -> ValueSpec | None:
        cmd = self.commands.get(entry)
        return next((f for f in cmd.set or [] if f.name == arg), None) if cmd else None

    def write_args(self, name: str) -> set[str] | None:
        cmd = self.commands.get(name)
        if cmd is None:
            return None
        if cmd.set is not None:
            return {f.name for f in cmd.set}
        return set() if cmd.action else None
