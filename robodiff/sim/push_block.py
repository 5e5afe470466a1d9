"""push_block runtime logic: a square block to a square target; success when the block's centre is
within `success.radius` of the target's. Units as in push_t (pixels of the 512 x 512 table)."""

from __future__ import annotations

import numpy as np

from robodiff.sim.logic import POSITIVE, RANGE, TaskLogic, set_mocap_pose, vector


class PushBlock(TaskLogic):
    CONFIG = {"goal": vector(2), "success": {"radius": POSITIVE}, "score": {"scale": POSITIVE},
              "reset": {"agent_x": RANGE, "agent_y": RANGE, "block_x": RANGE, "block_y": RANGE},
              "expert": {"speed": POSITIVE, "push_lead": POSITIVE, "margin": POSITIVE, "tolerance": POSITIVE}}

    def __init__(self, task, model) -> None:
        super().__init__(task, model)
        self.goal = np.asarray(self.cfg["goal"], dtype=np.float64)
        self.radius = float(self.cfg["success"]["radius"])
        self.score_scale = float(self.cfg["score"]["scale"])
        self._block = self.qpos_adr(model, "block_x", "block_y")
        self._agent = self.qpos_adr(model, "agent_x", "agent_y")
        self.half_size = float(model.geom("block").size[0])
        self.agent_radius = float(model.geom("agent").size[0])

    def block_pos(self, data) -> np.ndarray:
        return data.qpos[self._block].copy()

    def agent_pos(self, data) -> np.ndarray:
        return data.qpos[self._agent].copy()

    def observe(self, model, data) -> dict[str, np.ndarray]:
        return {"state": self.agent_pos(data)}

    def reset(self, model, data, rng: np.random.Generator) -> None:
        r = self.cfg["reset"]
        set_mocap_pose(model, data, "goal", np.array([*self.goal, 0.0]))
        data.qpos[self._agent] = [rng.uniform(*r["agent_x"]), rng.uniform(*r["agent_y"])]
        data.qpos[self._block] = [rng.uniform(*r["block_x"]), rng.uniform(*r["block_y"])]

    def evaluate(self, model, data) -> tuple[float, bool, dict]:
        dist = float(np.linalg.norm(self.block_pos(data) - self.goal))
        score = 1.0 - float(np.clip((dist - self.radius) / self.score_scale, 0.0, 1.0))
        return score, dist <= self.radius, {"distance": dist}
