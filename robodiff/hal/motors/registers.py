"""Servo control tables: registers by name, with their encoding and the values a servo may hold.

A register's bytes are decoded here and nowhere else: the byte order of the servo family, the sign
convention (Feetech: sign-magnitude with the sign in a register-specific bit; Dynamixel: two's
complement), and a range check, so a value that could only come from a damaged packet is refused
instead of reaching the control loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from robodiff.errors import UserError


@dataclass(frozen=True)
class Register:
    name: str
    address: int
    size: int  # bytes
    low: int  # the values this register can hold (reads outside are damaged packets)
    high: int
    sign_bit: int | None = None  # sign-magnitude: the bit that says negative

    def encode(self, value: int, byteorder: str) -> bytes:
        """`value` as the servo stores it; a value outside the register's range is refused before
        anything is sent."""
        value = int(value)
        if not self.low <= value <= self.high:
            raise UserError(f"servo register {self.name}: {value} is outside {self.low}..{self.high}")
        raw = value
        if self.sign_bit is not None and value < 0:
            raw = -value | (1 << self.sign_bit)
        return raw.to_bytes(self.size, byteorder)

    def decode(self, data: bytes, byteorder: str) -> int | None:
        """The value in `data`, or None when no servo could have sent it (bits above the sign bit,
        a negative zero, a value outside the range)."""
        if len(data) != self.size:
            return None
        raw = int.from_bytes(data, byteorder)
        if self.sign_bit is not None:
            magnitude = raw & ((1 << self.sign_bit) - 1)
            if raw >> (self.sign_bit + 1):
                return None
            negative = bool(raw >> self.sign_bit)
            if negative and magnitude == 0:
                return None
            raw = -magnitude if negative else magnitude
        return raw if self.low <= raw <= self.high else None


class RegisterTable:
    """One servo model's control table: `table["Present_Position"]` -> Register."""

    def __init__(self, model: str, model_number: int, byteorder: str, registers: list[Register]):
        self.model = model
        self.model_number = model_number
        self.byteorder = byteorder
        self._registers = {r.name: r for r in registers}

    def __getitem__(self, name: str) -> Register:
        if name not in self._registers:
            raise UserError(f"servo model {self.model} has no register '{name}' "
                           f"(it has: {', '.join(self._registers)})")
        return self._registers[name]

    def __iter__(self):
        return iter(self._registers.values())
