"""Servo buses: `MotorBus` (transactions, retries, faults) and its Feetech STS/SCS implementation;
`feetech_protocol` holds the packets and control tables both the driver and the emulator use."""

from robodiff.hal.motors.bus import BusError, Motor, MotorBus, PortVanishedError, ServoFaultError, ServoSilentError
from robodiff.hal.motors.feetech import BUSES, FeetechBus

__all__ = ["BUSES", "BusError", "FeetechBus", "Motor", "MotorBus", "PortVanishedError", "ServoFaultError",
           "ServoSilentError"]
