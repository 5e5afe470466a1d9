"""Calibrating an emulated arm without waiting for its person: `robodiff hardware calibrate`'s
procedure (`record_calibration`, the same code) against a `CalibrationPerson` on a clock that
moves as fast as the procedure reads, so a benchmark or a test gets a real calibration file for an
emulated arm in a second instead of the person's twenty."""

from __future__ import annotations

from pathlib import Path

from robodiff.hal.calibration import Calibration, calibration_path, record_calibration
from robodiff.hal.emulator.arm import EmulatedArm
from robodiff.hal.emulator.link import BusEmulator
from robodiff.hal.emulator.person import CalibrationPerson
from robodiff.hal.hardware import HardwareSpec, motors_of
from robodiff.hal.motors import BUSES

POLL_S = 0.01  # person time between two readings (the emulator steps its physics to each)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def calibrate_emulated(hardware: HardwareSpec, link: Path, arm_id: str, *, assembly_seed: int,
                       voltage_v: float) -> Calibration:
    """Calibrate the emulated arm that `robodiff hardware emulate` builds with `assembly_seed`
    (served here at `link` for the while), and save it as `arm_id`'s calibration."""
    clock = _Clock()
    arm = EmulatedArm(hardware, voltage_v=voltage_v, assembly_seed=assembly_seed, now=clock)
    person = arm.person = CalibrationPerson(arm.low, arm.high)
    emulator = BusEmulator(arm, link, now=clock).start()
    bus = BUSES[str(hardware.raw["bus"]["protocol"])](str(link), motors_of(hardware), baudrate=1_000_000,
                                                      timeout_s=0.5, retries=3, silent_reads=5)
    try:
        bus.connect()

        def wait(_: str) -> None:  # the person is in the middle pose a second later
            for _ in range(round(1.0 / POLL_S)):
                sleep()
                bus.read("Present_Position")  # the physics follows the clock in small steps

        def done() -> bool:
            return clock.t - arm.person_t0 > person.done_s + 0.5

        def sleep() -> None:
            clock.t += POLL_S

        full_turn = {n for n, j in hardware.raw["joints"].items() if isinstance(j, dict) and j.get("full_turn")}
        joints = record_calibration(bus, full_turn, wait, lambda _: None, done, sleep)
    finally:
        bus.disconnect()
        emulator.close()
    gripper = hardware.kinematics.gripper if hardware.kinematics is not None else None
    calibration = Calibration(joints, hardware.units.convention, gripper)
    calibration.save(calibration_path(arm_id))
    return calibration
