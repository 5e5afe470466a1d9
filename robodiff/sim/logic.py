"""The runtime logic of a MuJoCo task (`TaskLogic`): what it observes, how an episode starts, its
score and success. One class per task family (push_block, push_t, pick_place, reach), named by the
task YAML's `logic:`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robodiff.errors import UserError
from robodiff.hal.hardware import load_hardware


class TaskLogic:
    """Runtime logic of a MuJoCo task: `observe`, `reset(model, data, rng)`, `evaluate`."""

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


class ArmTaskLogic(TaskLogic):
    """A task of an arm (a robot with kinematics): its joints start at `reset.arm` (radians, the
    MJCF's), each moved by up to `reset.arm_noise` at random."""

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
