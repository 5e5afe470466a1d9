"""Calibrating an emulated arm without waiting for its person: `robodiff hardware calibrate`'s
procedure (`record_calibration`, the same code) against a `CalibrationPerson` on a clock that
moves as fast as the procedure reads, so a benchmark or a test gets a real calibration file for an
emulated arm in a second instead of the person's twenty."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from robodiff.hal.calibration import Calibration, calibration_path, record_calibration
from robodiff.hal.emulator.arm import EmulatedArm
from robodiff.hal.emulator.link import BusEmulator
from robodiff.hal.emulator.person import CalibrationPerson
from robodiff.hal.hardware import HardwareSpec
from robodiff.hal.robots.arm_bus import BusSettings, make_bus

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
    # a generous timeout: the physics catches up with the clock before each answer
    bus = make_bus(hardware, replace(BusSettings.of(hardware, "follower"), port=str(link), timeout_s=0.5))
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

        calibration = record_calibration(bus, hardware, wait, lambda _: None, done, sleep)
    finally:
        bus.disconnect()
        emulator.close()
    calibration.save(calibration_path(arm_id))
    return calibration
