"""so101_reach runtime logic: the arm's tool to a point drawn above the table; success within
`success.radius` of it, score falling with the distance."""

from __future__ import annotations

import numpy as np

from robodiff.sim.logic import POSITIVE, RANGE, ArmTaskLogic


class Reach(ArmTaskLogic):
    CONFIG = {"reset": {"target_x": RANGE, "target_y": RANGE, "target_z": RANGE, **ArmTaskLogic.ARM_RESET},
              "success": {"radius": POSITIVE}, "score": {"scale": POSITIVE}, "expert": {"speed": POSITIVE}}

    def __init__(self, task, model) -> None:
        super().__init__(task, model)
        self._tool = model.site(self.hardware.kinematics.site).id
        self._target = model.body_mocapid[model.body("target").id]
        self.radius = float(self.cfg["success"]["radius"])
        self.scale = float(self.cfg["score"]["scale"])

    def target(self, data) -> np.ndarray:
        return data.mocap_pos[self._target].copy()

    def observe(self, model, data) -> dict[str, np.ndarray]:
        return {"target": self.target(data)}

    def reset(self, model, data, rng: np.random.Generator) -> None:
        r = self.cfg["reset"]
        data.mocap_pos[self._target] = [rng.uniform(*r["target_x"]), rng.uniform(*r["target_y"]),
                                        rng.uniform(*r["target_z"])]
        self.reset_arm(data, rng)

    def evaluate(self, model, data) -> tuple[float, bool, dict]:
        distance = float(np.linalg.norm(data.site_xpos[self._tool] - self.target(data)))
        score = 1.0 - float(np.clip(distance / self.scale, 0.0, 1.0))
        return score, distance <= self.radius, {"distance": distance}
