"""Push-T runtime logic: reset distribution, observation, coverage score and success.

Units and frames are the original's: positions in pixels of the 512 x 512 table, the block pose is
the pose of the T's own frame (bar [-60,60]x[0,30], stem [-15,15]x[30,120]) and the goal is that
frame at (256, 256, pi/4). Images from the top camera have +y up, i.e. they are the original
rendering flipped vertically.
"""

from __future__ import annotations

import numpy as np

from robodiff.sim.coverage import T_PARTS, coverage, distance_to_parts, place
from robodiff.sim.logic import NUMBER, POSITIVE, RANGE, TaskLogic, set_mocap_pose, vector


class PushT(TaskLogic):
    CONFIG = {"goal": vector(3), "success": {"coverage": POSITIVE},
              "reset": {"agent_x": RANGE, "agent_y": RANGE, "block_x": RANGE, "block_y": RANGE,
                        "block_angle": RANGE, "clearance": NUMBER},
              "expert": {"speed": POSITIVE, "push_lead": POSITIVE, "margin": POSITIVE, "keep_ratio": POSITIVE}}

    def __init__(self, task, model) -> None:
        super().__init__(task, model)
        self.goal = np.asarray(self.cfg["goal"], dtype=np.float64)
        self.threshold = float(self.cfg["success"]["coverage"])
        self._block = self.qpos_adr(model, "block_x", "block_y", "block_rot")
        self._agent = self.qpos_adr(model, "agent_x", "agent_y")
        self.agent_radius = float(model.geom("agent").size[0])
        self.parts = T_PARTS
        # the block starts wholly on the table, clear of the walls
        self.table = (np.array([10.0, 10.0]), np.array([502.0, 502.0]))

    def block_pose(self, data) -> np.ndarray:
        return data.qpos[self._block].copy()

    def agent_pos(self, data) -> np.ndarray:
        return data.qpos[self._agent].copy()

    def observe(self, model, data) -> dict[str, np.ndarray]:
        pose = self.block_pose(data)
        pose[2] = pose[2] % (2 * np.pi)
        agent = self.agent_pos(data)
        return {"state": np.concatenate([agent, pose]), "agent_pos": agent}

    def reset(self, model, data, rng: np.random.Generator) -> None:
        r = self.cfg["reset"]
        set_mocap_pose(model, data, "goal", self.goal)
        while True:  # rejection sampling: the pusher must not start inside or touching the block
            agent = np.array([rng.uniform(*r["agent_x"]), rng.uniform(*r["agent_y"])])
            pose = np.array([rng.uniform(*r["block_x"]), rng.uniform(*r["block_y"]),
                             rng.uniform(*r["block_angle"])])
            block = place(self.parts, pose)
            inside = all(np.all((p >= self.table[0]) & (p <= self.table[1])) for p in block)
            if inside and distance_to_parts(agent, block) > self.agent_radius + float(r["clearance"]):
                break
        data.qpos[self._agent] = agent
        data.qpos[self._block] = pose

    def evaluate(self, model, data) -> tuple[float, bool, dict]:
        cov = coverage(self.block_pose(data), self.goal, self.parts)
        score = float(np.clip(cov / self.threshold, 0.0, 1.0))
        return score, cov > self.threshold, {"coverage": cov}
