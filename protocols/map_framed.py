"""Map format of the framed binary family (SYNC LEN SEQ CMD PAYLOAD CRC)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from protocols.map_common import Identifier, StrictModel, ValueSpec, check_bits

FrameFieldType = Literal["u8", "u16", "i16", "u32", "ascii"]
FIELD_SIZES: dict[str, int] = {"u8": 1, "u16": 2, "i16": 2, "u32": 4}


class FrameField(ValueSpec):
    name: Identifier
    type: FrameFieldType
    length: int | None = Field(None, ge=1, le=250)
    """Byte count of an `ascii` field (NUL-padded)."""
    bits: dict[Identifier, int] | None = None

    @model_validator(mode="after")
    def _length_for_ascii(self) -> FrameField:
        if (self.type == "ascii") != (self.length is not None):
            raise ValueError(f"field '{self.name}': 'length' is required for ascii "
                             "fields and only for them")
        if self.bits is not None:
            if self.type == "ascii":
                raise ValueError(f"field '{self.name}': ascii fields cannot have bits")
            check_bits(self.bits, FIELD_SIZES[self.type] * 8, f"field '{self.name}'")
        return self

    @property
    def size(self) -> int:
        return self.length if self.type == "ascii" and self.length else FIELD_SIZES[self.type]


def _check_layout(fields: list[FrameField], where: str) -> None:
    names = [f.name for f in fields]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"{where}: duplicate field names {', '.join(sorted(dupes))}")


class FrameCommand(StrictModel):
    code: int = Field(ge=0, le=255)
    description: str = ""
    request: list[FrameField] = Field(default_factory=list)
    reply: list[FrameField] = Field(default_factory=list)
    """Reply payload after the status byte."""
    needs_service: bool = False

    @model_validator(mode="after")
    def _layouts(self) -> FrameCommand:
        _check_layout(self.request, "request")
        _check_layout(self.reply, "reply")
        return self


class EventKind(StrictModel):
    name: Identifier
    description: str = ""


class EventFrames(StrictModel):
    """Unsolicited frames the device sends on its own."""

    code: int = Field(ge=0, le=255)
    seq: int = Field(0, ge=0, le=255)
    payload: list[FrameField]
    kind_field: Identifier
    """Payload field whose value selects one of `kinds`."""
    kinds: dict[int, EventKind]

    @model_validator(mode="after")
    def _kind_field_exists(self) -> EventFrames:
        _check_layout(self.payload, "event payload")
        if self.kind_field not in {f.name for f in self.payload}:
            raise ValueError(f"kind_field '{self.kind_field}' is not a payload field")
        return self


class FramedMap(StrictModel):
    family: Literal["framed_binary"]
    sync: int = Field(0xA5, ge=0, le=255)
    crc: Literal["crc16_ccitt_false"] = "crc16_ccitt_false"
    payload_byte_order: Literal["little", "big"] = "little"
    reply_code_offset: int = Field(0x80, ge=1, le=255)
    min_len: int = Field(2, ge=2)
    max_len: int = Field(252, le=253)
    seq_min: int = Field(1, ge=1, le=255)
    seq_max: int = Field(255, ge=1, le=255)
    ok_status: int = 0
    status_codes: dict[int, str]
    events: EventFrames | None = None
    commands: dict[Identifier, FrameCommand]
    open_with: Identifier = "ping"
    """The harmless command (no request fields) sent first on every new link: its reply is
    discarded, so a reply the device remembered from an earlier host is never taken as
    current (protocols/framed.py, FramedEngine._sync)."""

    @model_validator(mode="after")
    def _open_with_is_harmless(self) -> FramedMap:
        cmd = self.commands.get(self.open_with)
        if cmd is None or cmd.request:
            raise ValueError(f"open_with: the map needs a command '{self.open_with}' with no "
                             "request fields (a ping) to open every link with; name it here")
        return self

    @model_validator(mode="after")
    def _codes_unique(self) -> FramedMap:
        seen: dict[int, str] = {}
        for name, cmd in self.commands.items():
            if cmd.code in seen:
                raise ValueError(f"commands '{seen[cmd.code]}' and '{name}' share code "
                                 f"0x{cmd.code:02X}")
            seen[cmd.code] = name
            for layout in (cmd.request, cmd.reply):
                if 2 + sum(f.size for f in layout) + (1 if layout is cmd.reply else 0) \
                        > self.max_len:
                    raise ValueError(f"command '{name}': payload longer than max_len")
        if self.seq_min > self.seq_max:
            raise ValueError("seq_min is above seq_max")
        if self.ok_status not in self.status_codes:
            raise ValueError(f"ok_status {self.ok_status} is not in status_codes")
        return self

    def entry_names(self) -> set[str]:
        return set(self.commands)

    def result_keys(self, name: str) -> set[str]:
        cmd = self.commands.get(name)
        if cmd is None:
            return set()
        keys = set()
        for f in cmd.reply:
            keys.add(f"{name}.{f.name}")
            if f.bits:
                keys |= {f"{name}.{f.name}.{b}" for b in f.bits}
        return keys

    def arg_spec(self, entry: str, arg: str) -> ValueSpec | None:
        cmd = self.commands.get(entry)
        return next((f for f in cmd.request if f.name == arg), None) if cmd else None

    def write_args(self, name: str) -> set[str] | None:
        cmd = self.commands.get(name)
        return None if cmd is None else {f.name for f in cmd.request}
