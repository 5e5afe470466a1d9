"""An arm's calibration: per joint, its servo's homing offset and the range it travels, and the
arm's units computed from them (the units of the simulated arm: degrees around the middle of the
range or -100..100 over it; the gripper 0 closed .. 100 open in both).

    degrees   (v - (min + max) / 2) * 360 / 4095
    range100  (v - min) / (max - min) * 200 - 100
    gripper   (v - min) / (max - min) * 100

`v` being the servo's Present_Position after its Homing_Offset (so the middle pose reads 2047);
drive_mode 1 turns a joint's direction around. Kept as JSON, one file per arm id, in the user's
calibration directory (`robodiff.paths.calibration_dir`); the layout is LeRobot's, so a LeRobot
calibration file works here and ours there:
`{joint: {id, drive_mode, homing_offset, range_min, range_max}}` (docs/formats.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from robodiff.errors import UserError
from robodiff.hal.hardware import HardwareSpec
from robodiff.hal.motors.bus import MotorBus
from robodiff.paths import calibration_dir, write_text_atomic

RESOLUTION = 4095  # steps across a turn in the unit formulas (LeRobot's convention)
MIDDLE = 2047  # what the middle pose reads after its homing offset
MIN_TRAVEL = 100  # steps: a joint that moved less was not swept
FIELDS = ("id", "drive_mode", "homing_offset", "range_min", "range_max")


@dataclass(frozen=True)
class JointCalibration:
    id: int
    drive_mode: int
    homing_offset: int
    range_min: int
    range_max: int


def calibration_path(arm_id: str) -> Path:
    return calibration_dir() / f"{arm_id}.json"


class Calibration:
    """`to_units(raw)` and `to_raw(units)` for the arm's joints, in the units its hardware YAML
    names (`units:`); its kinematics' gripper is in 0..100 whatever the convention."""

    def __init__(self, joints: dict[str, JointCalibration], hardware: HardwareSpec) -> None:
        if hardware.units is None:
            raise UserError(f"{hardware.path}: an arm on a servo bus needs 'units'")
        convention = hardware.units.convention
        gripper = hardware.kinematics.gripper if hardware.kinematics is not None else None
        self.joints = joints
        self.names = list(joints)
        self.convention = convention
        cal = list(joints.values())
        self._min = np.array([c.range_min for c in cal], np.float64)
        self._max = np.array([c.range_max for c in cal], np.float64)
        self._sign = np.array([-1.0 if c.drive_mode else 1.0 for c in cal])
        self._is_gripper = np.array([n == gripper for n in self.names])
        # units = sign * (raw - centre) * scale (+ 50 for the gripper, whose centre is mid-range)
        span = np.maximum(self._max - self._min, 1.0)
        self._centre = (self._min + self._max) / 2
        if convention == "degrees":
            scale = np.full(len(cal), 360.0 / RESOLUTION)
        elif convention == "range100":
            scale = 200.0 / span
        else:
            raise UserError(f"{hardware.path}: units '{convention}': an arm calibration gives degrees or range100")
        self._scale = np.where(self._is_gripper, 100.0 / span, scale)
        self._shift = np.where(self._is_gripper, 50.0, 0.0)

    # ---- units ---------------------------------------------------------------------------------
    def to_units(self, raw: dict[str, int]) -> np.ndarray:
        v = np.array([raw[n] for n in self.names], np.float64)
        return self._sign * (v - self._centre) * self._scale + self._shift

    def to_raw(self, units: np.ndarray) -> dict[str, int]:
        """Goal positions for `units`, inside each joint's calibrated range."""
        v = (np.asarray(units, np.float64) - self._shift) / (self._sign * self._scale) + self._centre
        v = np.clip(np.round(v), self._min, self._max).astype(np.int64)
        return {n: int(x) for n, x in zip(self.names, v)}

    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated range in units (low <= high per joint)."""
        ends = np.stack([self.to_units(dict(zip(self.names, self._min))),
                         self.to_units(dict(zip(self.names, self._max)))])
        return ends.min(axis=0), ends.max(axis=0)

    def per_step(self, degrees: float) -> np.ndarray:
        """`degrees` of joint motion in each joint's units (the rate limit per control step)."""
        steps = degrees * RESOLUTION / 360.0
        return steps * self._scale

    # ---- files ---------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({n: asdict(c) for n, c in self.joints.items()}, indent=2) + "\n"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path, hardware: HardwareSpec, hint: str) -> "Calibration":
        """The calibration in `path` for the arm's joints; `hint` says how to make one."""
        names = list(hardware.joints)
        if not path.is_file():
            raise UserError(f"no calibration at {path}: {hint}")
        try:
            raw = json.loads(path.read_text())
            joints = {n: JointCalibration(**{k: int(raw[n][k]) for k in FIELDS}) for n in names}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a calibration of joints {', '.join(names)} "
                            f"({type(exc).__name__}: {exc}); {hint}") from None
        for name, c in joints.items():
            if not (0 <= c.range_min < c.range_max <= 4095 and abs(c.homing_offset) <= 2047):
                raise UserError(f"{path}: joint '{name}' has range {c.range_min}..{c.range_max} and offset "
                                f"{c.homing_offset} (need 0 <= min < max <= 4095, |offset| <= 2047); {hint}")
        return cls(joints, hardware)


def record_calibration(bus: MotorBus, hardware: HardwareSpec, wait: Callable[[str], None],
                       say: Callable[[str], None], done: Callable[[], bool],
                       sleep: Callable[[], None]) -> Calibration:
    """Walk a person through calibrating the arm on `bus` (torque off, position mode):

    1. the middle pose -> homing offsets `position - 2047`, so the middle reads 2047 (refused
       beyond +-2047, which the servo cannot hold);
    2. every joint swept through its whole range while the positions are polled (`sleep`
       between polls) until `done()` -> range min/max; a `full_turn: true` joint of the YAML
       (the wrist roll) gets the whole turn 0..4095. A reading that jumps by more than half a turn between two polls crossed
       the encoder's wrap point, which must not lie inside a joint's travel.
    Offsets and limits are written to the servos. `wait(message)` blocks until the person is
    ready (Enter); `say` tells them what to do while the positions are polled."""
    names = list(bus.motors)
    full_turn = {n for n, j in hardware.raw["joints"].items() if isinstance(j, dict) and j.get("full_turn")}
    bus.torque(False)
    bus.write_acked("Operating_Mode", dict.fromkeys(names, 0))
    bus.write_acked("Homing_Offset", dict.fromkeys(names, 0))
    bus.write_acked("Min_Position_Limit", dict.fromkeys(names, 0))
    bus.write_acked("Max_Position_Limit", dict.fromkeys(names, 4095))
    wait("Move the arm to the middle of its range (every joint half way between its ends), then press Enter.")
    middle = bus.read_fresh("Present_Position", names)
    offsets = {n: middle[n] - MIDDLE for n in names}
    for name, offset in offsets.items():
        if abs(offset) > 2047:
            raise UserError(f"joint '{name}': homing offset {offset} exceeds +-2047 (it reads {middle[name]} in "
                            f"the middle pose); turn its servo horn by a few teeth and calibrate again")
    bus.write_acked("Homing_Offset", offsets)
    say("Move every joint through its whole range, end to end (not the wrist roll: it turns freely), "
        "then press Enter.")
    low = high = previous = bus.read_fresh("Present_Position", names)
    while not done():
        sleep()
        now = bus.read_fresh("Present_Position", names)
        for name in names:
            if name not in full_turn and abs(now[name] - previous[name]) > 2048:
                raise UserError(f"joint '{name}': the encoder's wrap point lies inside its travel (the reading "
                                f"jumped from {previous[name]} to {now[name]}); calibrate again from a middle pose "
                                f"nearer the middle of this joint's range")
        low = {n: min(low[n], now[n]) for n in names}
        high = {n: max(high[n], now[n]) for n in names}
        previous = now
    for name in full_turn:
        low[name], high[name] = 0, 4095
    for name in names:
        if high[name] - low[name] < MIN_TRAVEL:
            raise UserError(f"joint '{name}' moved only {high[name] - low[name]} steps: move every joint from one "
                            f"end of its range to the other, then press Enter")
    bus.write_acked("Min_Position_Limit", low)
    bus.write_acked("Max_Position_Limit", high)
    return Calibration({n: JointCalibration(bus.motors[n].id, 0, offsets[n], low[n], high[n]) for n in names},
                       hardware)
