"""One emulated STS3215's control table: what the bus reads and writes, byte for byte.

Writes persist for the emulator's life (ids, offsets, limits, gains, torque), as EEPROM and RAM do
between power cycles of a real servo; the present-state registers are filled from the physics
before each read (`EmulatedArm.refresh`).
"""

from __future__ import annotations

from robodiff.hal.motors.registers import RegisterTable

# Factory state of a new STS3215 as our driver relies on it (id and baud rate as delivered; the
# goal is whatever the last session left, so a driver that enables torque without first setting
# the goal to the present position makes the arm jump, as a real one would).
FACTORY = {"ID": 1, "Baud_Rate": 0, "Return_Delay": 0, "Min_Position_Limit": 0, "Max_Position_Limit": 4095,
           "Max_Torque": 1000, "P_Coefficient": 32, "D_Coefficient": 32, "I_Coefficient": 0,
           "Protection_Current": 500, "Homing_Offset": 0, "Operating_Mode": 0, "Torque_Enable": 0,
           "Acceleration": 0, "Goal_Position": 2048, "Torque_Limit": 1000, "Lock": 0,
           "Present_Temperature": 30}


class Servo:
    def __init__(self, table: RegisterTable, servo_id: int, voltage_v: float) -> None:
        self.table = table
        self.memory = bytearray(256)
        self.set("Model_Number", table.model_number)
        for name, value in FACTORY.items():
            self.set(name, value)
        self.set("ID", servo_id)
        self.set("Present_Voltage", round(voltage_v * 10))

    @property
    def id(self) -> int:
        return self.get("ID")

    def get(self, name: str) -> int:
        reg = self.table[name]
        value = reg.decode(bytes(self.memory[reg.address:reg.address + reg.size]), self.table.byteorder)
        assert value is not None, f"{name} holds a value the servo cannot"
        return value

    def set(self, name: str, value: int) -> None:
        reg = self.table[name]
        self.memory[reg.address:reg.address + reg.size] = reg.encode(value, self.table.byteorder)

    def read(self, address: int, size: int) -> bytes:
        return bytes(self.memory[address:address + size])

    def write(self, address: int, data: bytes) -> set[str]:
        """Store `data` at `address`; the names of the registers it touched. Bytes that no
        register can hold (a value out of range) are ignored, as the firmware ignores them."""
        end = address + len(data)
        if end > len(self.memory):
            return set()  # past the control table: nothing there to write
        touched = {r for r in self.table if r.address < end and address < r.address + r.size}
        before = bytes(self.memory)
        self.memory[address:end] = data
        for reg in touched:
            raw = bytes(self.memory[reg.address:reg.address + reg.size])
            if reg.decode(raw, self.table.byteorder) is None:
                self.memory[:] = before
                return set()
        return {r.name for r in touched}
