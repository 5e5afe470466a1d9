"""Helpers for tests on an emulated SO-101 bus: a clock the test moves, an emulator serving on a
thread of the test process (`emulated`), and the calibration procedure run against one
(`calibrate_emulated`) so that the physical arm's driver finds a real calibration file."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

from robodiff.hal.calibration import Calibration  # noqa: E402
from robodiff.hal.emulator import BusEmulator, EmulatedArm  # noqa: E402
from robodiff.hal.emulator.calibrate import calibrate_emulated as emulator_calibration  # noqa: E402
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


def calibrate_emulated(link: Path, arm_id: str, assembly_seed: int = 0, voltage_v: float = 12.0) -> Calibration:
    """`robodiff hardware calibrate`'s procedure against the emulated arm with `assembly_seed`,
    its person on a fast clock; saved as `arm_id` in the calibration directory."""
    return emulator_calibration(load_hardware("so101"), link, arm_id, assembly_seed=assembly_seed, voltage_v=voltage_v)
