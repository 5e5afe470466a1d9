"""An arm's servo bus as its hardware YAML describes it (the follower's, or its leader's), checked
at connect and kept in the arm's calibration.

At connect: every servo answers and is the model the YAML names (the STS3215 reads 777), the
supply voltage is in the range the arm runs on, and the calibration file's homing offsets and
position limits are on the servos (written when they differ, as after a servo was swapped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from robodiff.errors import UserError
from robodiff.hal.calibration import Calibration, calibration_path
from robodiff.hal.hardware import HardwareSpec, motors_of
from robodiff.hal.motors import BUSES, MotorBus
from robodiff.hal.motors.bus import open_serial

ARMS = ("follower", "leader")


@dataclass(frozen=True)
class BusSettings:
    """The YAML's `port`, `id` and `bus:` block (`leader:` overrides port, id and voltage)."""

    port: str
    arm_id: str
    protocol: str
    baudrate: int
    timeout_s: float
    retries: int
    silent_reads: int
    voltage: tuple[float, float]

    @classmethod
    def of(cls, hardware: HardwareSpec, arm: str) -> "BusSettings":
        raw = hardware.raw
        where = raw.get("leader") if arm == "leader" else raw
        bus = raw.get("bus")
        need = {"protocol", "baudrate", "timeout_ms", "retries", "silent_reads", "voltage"}
        if not isinstance(bus, dict) or not need <= set(bus):
            raise UserError(f"{hardware.path}: 'bus' needs {', '.join(sorted(need))}")
        if not isinstance(where, dict) or not {"port", "id"} <= set(where):
            block = "'leader'" if arm == "leader" else "the top level"
            raise UserError(f"{hardware.path}: {block} needs 'port' and 'id' for the {arm} arm")
        voltage = where.get("voltage", bus["voltage"])
        if str(bus["protocol"]) not in BUSES:
            raise UserError(f"{hardware.path}: bus protocol '{bus['protocol']}' is not one of {', '.join(BUSES)}")
        return cls(str(where["port"]), str(where["id"]), str(bus["protocol"]), int(bus["baudrate"]),
                   float(bus["timeout_ms"]) / 1e3, int(bus["retries"]), int(bus["silent_reads"]),
                   (float(voltage[0]), float(voltage[1])))


def make_bus(hardware: HardwareSpec, settings: BusSettings,
             open_port: Callable[[str, int, float], Any] = open_serial) -> MotorBus:
    return BUSES[settings.protocol](settings.port, motors_of(hardware), baudrate=settings.baudrate,
                                    timeout_s=settings.timeout_s, retries=settings.retries,
                                    silent_reads=settings.silent_reads, open_port=open_port)


def check_servos(bus: MotorBus, settings: BusSettings, arm: str) -> None:
    """Every servo answers, is the model the YAML names, and the supply is what the arm runs on."""
    names = list(bus.motors)
    for name, number in bus.read_fresh("Model_Number", names).items():
        table = bus.TABLES[bus.motors[name].model]
        if number != table.model_number:
            raise UserError(f"{settings.port}: servo '{name}' (id {bus.motors[name].id}) is model number {number}, "
                            f"not the {table.model} ({table.model_number}) the arm has")
    volts = np.array(list(bus.read_fresh("Present_Voltage", names).values())) / 10
    low, high = settings.voltage
    if not (low <= volts.min() and volts.max() <= high):
        raise UserError(f"{settings.port}: the servos read {volts.min():.1f}-{volts.max():.1f} V, outside the "
                        f"{low:g}-{high:g} V the {arm} arm runs on: check its power supply")


class ArmBus:
    """`connect()`, then `positions()` in the arm's units; `bus` for everything else."""

    def __init__(self, hardware: HardwareSpec, arm: str,
                 open_port: Callable[[str, int, float], Any] = open_serial) -> None:
        self.hardware = hardware
        self.arm = arm
        self.settings = BusSettings.of(hardware, arm)
        self.bus = make_bus(hardware, self.settings, open_port)
        self.names = list(self.bus.motors)
        hint = f"calibrate the {arm} arm first (`robodiff hardware calibrate robot={hardware.name} arm={arm}`)"
        self.calibration = Calibration.load(calibration_path(self.settings.arm_id), hardware, hint)

    def connect(self) -> None:
        self.bus.connect()
        try:
            self._check()
        except BaseException:
            self.bus.disconnect()
            raise

    def _check(self) -> None:
        bus = self.bus
        check_servos(bus, self.settings, self.arm)
        for register, field in (("Homing_Offset", "homing_offset"), ("Min_Position_Limit", "range_min"),
                                ("Max_Position_Limit", "range_max")):
            want = {n: getattr(c, field) for n, c in self.calibration.joints.items()}
            if bus.read_fresh(register, self.names) != want:
                bus.torque(False)  # EEPROM settings are written with the torque off
                bus.write_acked(register, want)

    def positions(self) -> np.ndarray:
        """Present positions in the arm's units (a stale value is counted by the bus)."""
        return self.calibration.to_units(self.bus.read("Present_Position", self.names))
