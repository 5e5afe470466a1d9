"""so101_pick_place runtime logic: a cube to a marked square with the SO-101 arm.

Success: the cube's centre is inside the square, the cube rests on the table (slow, its bottom
near the table top) and no jaw touches it (the gripper let go). The score rewards progress:
grasped, lifted, and the cube's distance from the square (weights in the task YAML).
"""

from __future__ import annotations

import numpy as np

from robodiff.sim.logic import NUMBER, POSITIVE, RANGE, ArmTaskLogic, set_mocap_pose, vector

JAWS = ("fixed_jaw", "moving_jaw")


def yaw_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


class PickPlace(ArmTaskLogic):
    CONFIG = {"goal": {"center": vector(2), "size": POSITIVE},
              "reset": {"cube_x": RANGE, "cube_y": RANGE, "cube_yaw": RANGE, **ArmTaskLogic.ARM_RESET},
              "success": {"rest_speed": POSITIVE, "rest_height": POSITIVE},
              "score": {"grasped": NUMBER, "lifted": NUMBER, "lift_height": POSITIVE, "near": NUMBER,
                        "near_scale": POSITIVE},
              "expert": {"speed": POSITIVE, "hover": POSITIVE, "grasp_height": NUMBER, "grasp_offset": NUMBER,
                         "place_height": NUMBER, "open": POSITIVE, "close_steps": POSITIVE}}

    def __init__(self, task, model) -> None:
        super().__init__(task, model)
        self.center = np.asarray(self.cfg["goal"]["center"], dtype=np.float64)
        self.half_side = float(self.cfg["goal"]["size"]) / 2
        self.success_cfg = self.cfg["success"]
        self.score_cfg = self.cfg["score"]
        self._cube = self.qpos_adr(model, "cube")[0]
        self._cube_dof = model.jnt_dofadr[model.joint("cube").id]
        self.cube_geom = model.geom("cube").id
        self.cube_half = float(model.geom("cube").size[0])
        self._jaws = {model.geom(name).id for name in JAWS}

    # ---- state --------------------------------------------------------------------------------
    def cube_pose(self, data) -> np.ndarray:
        """[x, y, z, qw, qx, qy, qz] of the cube."""
        return data.qpos[self._cube:self._cube + 7].copy()

    def cube_yaw(self, data) -> float:
        w, x, y, z = self.cube_pose(data)[3:]
        return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))

    def jaws_touching(self, data) -> set[int]:
        touching = set()
        for contact in data.contact[: data.ncon]:
            pair = {int(contact.geom1), int(contact.geom2)}
            if self.cube_geom in pair:
                touching |= pair & self._jaws
        return touching

    def distance_to_goal(self, data) -> float:
        """How far the cube's centre is outside the square (0 inside), in the table's plane."""
        outside = np.maximum(np.abs(self.cube_pose(data)[:2] - self.center) - self.half_side, 0.0)
        return float(np.linalg.norm(outside))

    # ---- TaskLogic ----------------------------------------------------------------------------
    def observe(self, model, data) -> dict[str, np.ndarray]:
        return {"cube_pose": self.cube_pose(data)}

    def reset(self, model, data, rng: np.random.Generator) -> None:
        r = self.cfg["reset"]
        set_mocap_pose(model, data, "target", np.array([*self.center, 0.0]))
        x, y, yaw = rng.uniform(*r["cube_x"]), rng.uniform(*r["cube_y"]), rng.uniform(*r["cube_yaw"])
        data.qpos[self._cube:self._cube + 7] = [x, y, self.cube_half, *yaw_quat(yaw)]
        self.reset_arm(data, rng)

    def evaluate(self, model, data) -> tuple[float, bool, dict]:
        touching = self.jaws_touching(data)
        bottom = self.cube_pose(data)[2] - self.cube_half
        speed = float(np.linalg.norm(data.qvel[self._cube_dof:self._cube_dof + 3]))
        distance = self.distance_to_goal(data)
        resting = speed <= float(self.success_cfg["rest_speed"]) and bottom <= float(self.success_cfg["rest_height"])
        success = distance == 0.0 and resting and not touching
        grasped = touching == self._jaws
        lifted = grasped and bottom >= float(self.score_cfg["lift_height"])
        s = self.score_cfg
        near = 1.0 - float(np.clip(distance / float(s["near_scale"]), 0.0, 1.0))
        progress = float(s["grasped"]) * grasped + float(s["lifted"]) * lifted + float(s["near"]) * near
        score = 1.0 if success else progress
        return score, success, {"distance": distance, "grasped": grasped, "lifted": lifted}
