"""A motor bus over a pseudo-terminal, its servos' joints simulated by the arm's MuJoCo model:
it stands in for the servos (never for our code) so the physical arm's driver, calibration and
commands run here byte for byte."""

from robodiff.hal.emulator.arm import EmulatedArm
from robodiff.hal.emulator.link import BusEmulator
from robodiff.hal.emulator.person import CalibrationPerson, Person, RecordedPerson, TeleopPerson

__all__ = ["BusEmulator", "CalibrationPerson", "EmulatedArm", "Person", "RecordedPerson", "TeleopPerson"]
