"""Map format of the framed binary family (SYNC LEN SEQ CMD PAYLOAD CRC)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from protocols.map_common import (
    FaultClass,
    Identifier,
    ResultKind,
    StrictModel,
    ValueSpec,
    check_bits,
)

FrameFieldType = Literal["u8", "u16", "i16", "u32", "ascii"]
FIELD_SIZES: dict[str, int] = {"u8": 1, "u16": 2, "i16": 2, "u32": 4}
# Relative slack when checking that a raw value sits on a field's step grid.
STEP_SLACK = 1e-9
# An event value shown in engineering units is rounded to this many decimals (85 x 0.1).
VALUE_DIGITS = 9


class FrameField(ValueSpec):
    name: Identifier
    type: FrameFieldType
    length: int | None = Field(None, ge=1, le=250)
    """Byte count of an `ascii` field (NUL-padded)."""
    bits: dict[Identifier, int] | None = None
    step: int | None = Field(None, gt=0)
    """Raw values inside `min..max` must be whole multiples of this, counted from `min`
    (or 0): amplitude in 0.01 mA units that takes multiples of 10 only is `scale: 0.01,
    step: 10`. Values listed in `allowed` are accepted as listed."""

    @model_validator(mode="after")
    def _length_for_ascii(self) -> FrameField:
        if self.step is not None and self.type == "ascii":
            raise ValueError(f"field '{self.name}': ascii fields cannot have a step")
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

    def raw_in_range(self, raw: Any) -> bool:
        if not super().raw_in_range(raw):
            return False
        if self.step is None or (self.allowed is not None and raw in self.allowed):
            return True
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            return False
        n = (raw - (self.min or 0)) / self.step
        return abs(n - round(n)) <= STEP_SLACK * max(1.0, abs(n))

    def describe_range(self) -> str:
        text = super().describe_range()
        if self.step is not None:
            text += f", in steps of {self.step} from {self.min or 0:g}"
        return text


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


class EventValue(StrictModel):
    """What the payload's `value` field means for one kind of event."""

    scale: float = Field(1.0, gt=0)
    unit: str = ""
    description: str = ""
    """Shown before the number: "electrode impedance" -> "(electrode impedance 12000 ohm)"."""


class EventKind(StrictModel):
    # Written `class:` in YAML (a Python keyword) and dumped so, so that a dump reloads.
    model_config = ConfigDict(serialize_by_alias=True)

    name: Identifier
    """What the event is, in the modality's words (`lead_off`, `patient_stop`)."""
    description: str = ""
    label: str = ""
    """Words for the operator in the stop reason; the name with spaces when empty."""
    class_: FaultClass = Field("device_fault", alias="class")
    """What it means for a session (protocols/map_common.py FaultClass)."""
    value: EventValue | None = None

    def text(self, raw_value: object) -> str:
        """The stop reason: the label, and the value in its unit when the kind gives one."""
        words = self.label or self.name.replace("_", " ")
        v = self.value
        if v is None or isinstance(raw_value, bool) or not isinstance(raw_value, (int, float)):
            return words
        number = round(raw_value * v.scale, VALUE_DIGITS)
        shown = " ".join(p for p in (v.description, f"{number:g}", v.unit) if p)
        return f"{words} ({shown})"


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

    def result_kind(self, key: str) -> ResultKind | None:
        entry, _, rest = key.partition(".")
        cmd = self.commands.get(entry)
        name, _, bit = rest.partition(".")
        field = next((f for f in cmd.reply if f.name == name), None) if cmd else None
        if field is None or (bit and bit not in (field.bits or {})):
            return None
        return "flag" if bit else ("text" if field.type == "ascii" else "number")

    def arg_spec(self, entry: str, arg: str) -> ValueSpec | None:
        cmd = self.commands.get(entry)
        return next((f for f in cmd.request if f.name == arg), None) if cmd else None

    def write_args(self, name: str) -> set[str] | None:
        cmd = self.commands.get(name)
        return None if cmd is None else {f.name for f in cmd.request}
