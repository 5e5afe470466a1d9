"""Helpers for tests on an emulated SO-101 bus: a clock the test moves, an emulator serving on a
thread of the test process (`emulated`), and the calibration procedure run against one
(`calibrate_emulated`, with its scripted person) so that the physical arm's driver finds a real
calibration file."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

from robodiff.hal.calibration import Calibration, calibration_path, record_calibration  # noqa: E402
from robodiff.hal.emulator import BusEmulator, CalibrationPerson, EmulatedArm  # noqa: E402
from robodiff.hal.hardware import load_hardware, motors_of  # noqa: E402
from robodiff.hal.motors import FeetechBus  # noqa: E402

LEADER_SEED = 7  # the leader is another arm: its servo horns sit elsewhere


class FakeClock:
    """Time that moves only when the test says so."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@contextmanager
def emulated(link: Path, *, voltage_v: float = 12.0, person=None, now=None, assembly_seed: int = 0, **faults):
    """An emulated so101 arm served on a thread at `link`; `person(low, high)` makes its person."""
    kw = {} if now is None else {"now": now}
    arm = EmulatedArm(load_hardware("so101"), voltage_v=voltage_v, assembly_seed=assembly_seed, **kw)
    if person is not None:
        arm.person = person(arm.low, arm.high)
    emulator = BusEmulator(arm, link, **faults, **kw).start()
    try:
        yield emulator
    finally:
        emulator.close()


def bus_at(link: Path, retries: int = 3, silent_reads: int = 5, timeout_s: float = 0.05) -> FeetechBus:
    bus = FeetechBus(str(link), motors_of(load_hardware("so101")), baudrate=1_000_000, timeout_s=timeout_s,
                     retries=retries, silent_reads=silent_reads)
    bus.connect()
    return bus


def calibrate_emulated(link: Path, arm_id: str, assembly_seed: int = 0, voltage_v: float = 12.0,
                       units: str = "degrees") -> Calibration:
    """`robodiff hardware calibrate`'s procedure against an emulated arm whose person does as told,
    on a clock the helper moves (seconds of person time in a fraction of that); saved as `arm_id`."""
    clock = FakeClock()
    with emulated(link, now=clock, person=CalibrationPerson, assembly_seed=assembly_seed,
                  voltage_v=voltage_v) as emulator:
        bus = bus_at(link)
        person = emulator.arm.person

        def wait(_: str) -> None:  # the person reaches the middle pose, then presses Enter
            clock.advance(1.0)
            bus.read("Present_Position")

        def done() -> bool:
            return clock.t - emulator.arm.person_t0 > person.done_s + 0.5

        joints = record_calibration(bus, {"wrist_roll"}, wait, lambda _: None, done, lambda: clock.advance(0.01))
        bus.disconnect()
    calibration = Calibration(joints, units, "gripper")
    calibration.save(calibration_path(arm_id))
    return calibration
