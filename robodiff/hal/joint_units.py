"""An arm's joint units: the mapping between simulation radians and the units its state and actions use.

LeRobot's SO-101 data comes in two conventions, both in wide use, and its metadata does not say
which: `degrees` (0 at the middle of each calibrated range) and `range100` (-100..100 over the
calibrated range); the gripper is 0 (closed) .. 100 (open) in both. The hardware YAML writes, per
joint and convention, `units = sign * (radians - offset) * scale`, so the mapping is data that a
test can check against the MJCF's ranges, not a formula hidden in code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robodiff.errors import UserError
from robodiff.features import JOINT_UNITS


@dataclass(frozen=True)
class JointUnits:
    """`to_units(radians)` and `to_radians(units)` for the joints `names`, in that order."""

    convention: str
    names: tuple[str, ...]
    sign: np.ndarray
    offset: np.ndarray
    scale: np.ndarray

    def to_units(self, radians: Any) -> np.ndarray:
        return self.sign * (np.asarray(radians, np.float64) - self.offset) * self.scale

    def to_radians(self, units: Any) -> np.ndarray:
        return np.asarray(units, np.float64) / (self.sign * self.scale) + self.offset

    def select(self, names: tuple[str, ...]) -> "JointUnits":
        """The mapping of some of the joints (e.g. those before the gripper)."""
        index = [self.names.index(n) for n in names]
        return JointUnits(self.convention, tuple(names), self.sign[index], self.offset[index], self.scale[index])


def parse_joint_units(joints: dict[str, Any], convention: str, path: Path) -> JointUnits:
    """The `convention` mapping of every joint of a hardware YAML's `joints:` block."""
    if convention not in JOINT_UNITS:
        raise UserError(f"{path}: units '{convention}' is not one of {', '.join(JOINT_UNITS)}")
    sign, offset, scale = [], [], []
    for name, spec in joints.items():
        entry = spec.get(convention) if isinstance(spec, dict) else None
        if not isinstance(entry, dict) or not {"sign", "offset", "scale"} <= set(entry):
            raise UserError(f"{path}: joint '{name}' needs '{convention}: {{sign, offset, scale}}'")
        if entry["sign"] not in (1, -1) or not float(entry["scale"]) > 0:
            raise UserError(f"{path}: joint '{name}' {convention}: sign must be 1 or -1 and scale > 0")
        sign.append(float(entry["sign"]))
        offset.append(float(entry["offset"]))
        scale.append(float(entry["scale"]))
    return JointUnits(convention, tuple(joints), np.array(sign), np.array(offset), np.array(scale))
