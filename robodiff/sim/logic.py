"""The runtime logic of a MuJoCo task (`TaskLogic`): what it observes, how an episode starts, its
score and success. One class per task family (push_block, push_t, pick_place, reach), named by the
task YAML's `logic:`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robodiff.errors import UserError
from robodiff.hal.hardware import load_hardware


NUMBER, POSITIVE, RANGE = "number", "positive", "range"


def vector(length: int | None = None) -> tuple[str, int | None]:
    """A list of numbers (of `length` of them, when given) in a task YAML."""
    return ("vector", length)


VECTOR = vector()


class TaskLogic:
    """Runtime logic of a MuJoCo task: `observe`, `reset(model, data, rng)`, `evaluate`.

    `CONFIG` declares the task-YAML blocks the logic (and its scripted expert) reads: a block is a
    `vector(n)` of numbers, or a mapping of keys to NUMBER, POSITIVE, RANGE ([low, high]) or vector. The task loader checks
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


def _check_value(value: Any, kind: Any, where: str, path: Any) -> None:
    if isinstance(kind, tuple):  # vector(length)
        length = kind[1]
        if not (isinstance(value, list) and value and all(map(_is_number, value))
                and (length is None or len(value) == length)):
            size = f"{length} numbers" if length else "numbers"
            raise UserError(f"{path}: '{where}' must be a list of {size}, got {value!r}")
    elif kind in (NUMBER, POSITIVE) and not (_is_number(value) and (kind == NUMBER or value > 0)):
        raise UserError(f"{path}: '{where}' must be a {'positive ' if kind == POSITIVE else ''}number, got {value!r}")
    elif kind == RANGE and not (isinstance(value, list) and len(value) == 2 and all(map(_is_number, value))
                                and value[0] <= value[1]):
        raise UserError(f"{path}: '{where}' must be [low, high] with low <= high, got {value!r}")


def check_logic_config(cfg: dict[str, Any], spec: dict[str, Any], path: Any) -> None:
    """`cfg` (a task YAML) holds every block of `spec`, with exactly its keys and kinds of value."""
    for block, keys in spec.items():
        if block not in cfg:
            raise UserError(f"{path}: missing key '{block}'")
        value = cfg[block]
        if not isinstance(keys, dict):
            _check_value(value, keys, block, path)
            continue
        if not isinstance(value, dict):
            raise UserError(f"{path}: '{block}' must be a mapping of {', '.join(keys)}")
        unknown = sorted(set(value) - set(keys))
        if unknown:
            raise UserError(f"{path}: unknown key '{block}.{unknown[0]}' (known: {', '.join(keys)})")
        for key, kind in keys.items():
            if key not in value:
                raise UserError(f"{path}: missing key '{block}.{key}'")
            _check_value(value[key], kind, f"{block}.{key}", path)


class ArmTaskLogic(TaskLogic):
    """A task of an arm (a robot with kinematics): its joints start at `reset.arm` (radians, the
    MJCF's), each moved by up to `reset.arm_noise` at random."""

    ARM_RESET = {"arm": VECTOR, "arm_noise": NUMBER}  # the arm's joint count is checked by its scene

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
