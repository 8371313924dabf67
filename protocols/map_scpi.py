"""Map format of the SCPI-style ASCII line family."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from protocols.map_common import Identifier, StrictModel, ValueSpec

FieldType = Literal["int", "float", "enum", "text", "quoted", "date"]
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

    @model_validator(mode="after")
    def _enum_has_values(self) -> ScpiField:
        if self.type == "enum" and not self.allowed:
            raise ValueError(f"enum field '{self.name}' needs 'allowed' values")
        return self


class ScpiCommand(StrictModel):
    """One command header and the forms the device accepts for it."""

    header: str = Field(pattern=HEADER_PATTERN)
    description: str = ""
    action: bool = False
    """The bare header is a command of its own (`*RST`, `ABORt`)."""
    set: list[ScpiField] | None = None
    """`HEADER arg[,arg...]` is accepted, with these argument fields."""
    query: list[ScpiField] | None = None
    """`HEADER?` is accepted and answers these comma-separated fields."""
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
