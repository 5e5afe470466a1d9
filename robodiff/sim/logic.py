"""The runtime logic of a MuJoCo task (`TaskLogic`): what it observes, how an episode starts, its
score and success. One class per task family (push_block, push_t, pick_place, reach), named by the
task YAML's `logic:`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robodiff.errors import UserError
from robodiff.hal.hardware import load_hardware


NUMBER, RANGE, VECTOR = "number", "range", "vector"


class TaskLogic:
    """Runtime logic of a MuJoCo task: `observe`, `reset(model, data, rng)`, `evaluate`.

    `CONFIG` declares the task-YAML blocks the logic (and its scripted expert) reads: a block is a
    VECTOR of numbers, or a mapping of keys to NUMBER, RANGE ([low, high]) or VECTOR. The task loader checks
    a YAML against it, so a misspelt nested key is a one-line error naming it."""

    CONFIG: dict[str, Any] = {}

    def __init__(self, task: Any, model) -> None:
        self.task = task
        self.cfg = task.config

    def qpos_adr(self, model, *joints: str) -> np.ndarray:
        try:
            return np.array([model.jnt_qposadr[model.joint(j).id] for j in joints])
        except KeyError as exc:
            raise UserError(f"{self.task.path}: the scene has no joint {exc}") from None

    def observe(self, model, data) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def reset(self, model, data, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def evaluate(self, model, data) -> tuple[float, bool, dict]:
        """(score in [0, 1], success, extra info) for the current state."""
        raise NotImplementedError


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def check_logic_config(cfg: dict[str, Any], spec: dict[str, Any], path: Any) -> None:
    """`cfg` (a task YAML) holds every block of `spec`, with exactly its keys and kinds of value."""
    for block, keys in spec.items():
        if block not in cfg:
            raise UserError(f"{path}: missing key '{block}'")
        value = cfg[block]
        if keys == VECTOR:
            if not isinstance(value, list) or not value or not all(_is_number(v) for v in value):
                raise UserError(f"{path}: '{block}' must be a list of numbers, got {value!r}")
            continue
        if not isinstance(value, dict):
            raise UserError(f"{path}: '{block}' must be a mapping of {', '.join(keys)}")
        unknown = sorted(set(value) - set(keys))
        if unknown:
            raise UserError(f"{path}: unknown key '{block}.{unknown[0]}' (known: {', '.join(keys)})")
        for key, kind in keys.items():
            if key not in value:
                raise UserError(f"{path}: missing key '{block}.{key}'")
            item = value[key]
            if kind == VECTOR and not (isinstance(item, list) and item and all(map(_is_number, item))):
                raise UserError(f"{path}: '{block}.{key}' must be a list of numbers, got {item!r}")
            if kind == NUMBER and not _is_number(item):
                raise UserError(f"{path}: '{block}.{key}' must be a number, got {item!r}")
            if kind == RANGE and not (isinstance(item, list) and len(item) == 2 and all(map(_is_number, item))
                                      and item[0] <= item[1]):
                raise UserError(f"{path}: '{block}.{key}' must be [low, high] with low <= high, got {item!r}")


class ArmTaskLogic(TaskLogic):
    """A task of an arm (a robot with kinematics): its joints start at `reset.arm` (radians, the
    MJCF's), each moved by up to `reset.arm_noise` at random."""

    ARM_RESET = {"arm": VECTOR, "arm_noise": NUMBER}

    def __init__(self, task: Any, model) -> None:
        super().__init__(task, model)
        self.hardware = load_hardware(task.robot)
        self._arm = self.qpos_adr(model, *self.hardware.joints)
        self._arm_start = np.asarray(self.cfg["reset"]["arm"], dtype=np.float64)
        self._arm_noise = float(self.cfg["reset"]["arm_noise"])

    def reset_arm(self, data, rng: np.random.Generator) -> None:
        data.qpos[self._arm] = self._arm_start + rng.uniform(-self._arm_noise, self._arm_noise, len(self._arm))


def set_mocap_pose(model, data, body: str, pose: np.ndarray) -> None:
    """Place a mocap body (e.g. a goal marker) at a planar pose (x, y, angle); z is kept."""
    mocap = model.body_mocapid[model.body(body).id]
    data.mocap_pos[mocap, :2] = pose[:2]
    data.mocap_quat[mocap] = [np.cos(pose[2] / 2), 0.0, 0.0, np.sin(pose[2] / 2)]
