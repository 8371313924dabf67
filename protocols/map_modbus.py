"""Map format of the Modbus RTU family: input and holding register tables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from protocols.map_common import Identifier, ResultKind, StrictModel, ValueSpec, check_bits

RegisterType = Literal["int16", "uint16", "bits"]
STANDARD_EXCEPTIONS: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
}


class ModbusRegister(ValueSpec):
    """One 16-bit register. `bits` names the flags of a `bits` register."""

    address: int = Field(ge=0, le=0xFFFF)
    type: RegisterType
    bits: dict[Identifier, int] | None = None
    calibration_only: bool = False
    """Writable only in the device's calibration/service mode."""

    @model_validator(mode="after")
    def _bits_only_for_bit_registers(self) -> ModbusRegister:
        if self.bits is not None and self.type != "bits":
            raise ValueError("'bits' is only for registers of type 'bits'")
        check_bits(self.bits, 16, "bits")
        low, high = (-32768, 32767) if self.type == "int16" else (0, 65535)
        for bound in (self.min, self.max):
            if bound is not None and not low <= bound <= high:
                raise ValueError(f"range bound {bound:g} does not fit a {self.type} register")
        return self


class ModbusMap(StrictModel):
    family: Literal["modbus_rtu"]
    unit_address: int = Field(1, ge=1, le=247)
    max_registers_per_request: int = Field(16, ge=1, le=125)
    exception_codes: dict[int, str] = Field(default_factory=lambda: dict(STANDARD_EXCEPTIONS))
    input_registers: dict[Identifier, ModbusRegister]
    holding_registers: dict[Identifier, ModbusRegister]

    @model_validator(mode="after")
    def _unique(self) -> ModbusMap:
        for table_name, table in (("input_registers", self.input_registers),
                                  ("holding_registers", self.holding_registers)):
            seen: dict[int, str] = {}
            for name, reg in table.items():
                if reg.address in seen:
                    raise ValueError(f"{table_name}: '{seen[reg.address]}' and '{name}' "
                                     f"share address {reg.address}")
                seen[reg.address] = name
        both = set(self.input_registers) & set(self.holding_registers)
        if both:
            raise ValueError("register names must be unique across both tables; "
                             f"in both: {', '.join(sorted(both))}")
        return self

    def register(self, name: str) -> tuple[str, ModbusRegister] | None:
        """('input'|'holding', register) for a register name, or None."""
        if name in self.input_registers:
            return "input", self.input_registers[name]
        if name in self.holding_registers:
            return "holding", self.holding_registers[name]
        return None

    def entry_names(self) -> set[str]:
        return set(self.input_registers) | set(self.holding_registers)

    def result_keys(self, name: str) -> set[str]:
        """Keys a read of this register yields: the value and one per named bit."""
        found = self.register(name)
        if found is None:
            return set()
        keys = {name}
        if found[1].bits:
            keys |= {f"{name}.{bit}" for bit in found[1].bits}
        return keys

    def result_kind(self, key: str) -> ResultKind | None:
        """Registers read as numbers; a named bit (`status.output_enabled`) as a flag."""
        name, _, bit = key.partition(".")
        if key not in self.result_keys(name):
            return None
        return "flag" if bit else "number"

    def arg_spec(self, entry: str, arg: str) -> ValueSpec | None:
        """The accepted values of one write argument (a holding register's `value`)."""
        return self.holding_registers.get(entry) if arg == "value" else None

    def write_args(self, name: str) -> set[str] | None:
        """Argument names a write takes; None when the entry cannot be written."""
        return {"value"} if name in self.holding_registers else None
