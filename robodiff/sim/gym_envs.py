"""Gymnasium, both ways.

- Every MuJoCo task is registered as `robodiff/<task>` when this module is imported:
  `gymnasium.make("robodiff/push_block")` gives a Dict observation space (the task's observation
  features; the timestamp goes to `info`) and a Box action space (the robot's limits). The reward is
  the task's score; `terminated` on success, `truncated` at the step limit.
- A `kind: gym` task YAML wraps any installed gymnasium env for evaluation (`robodiff.sim.gym_tasks`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from robodiff.features import Feature
from robodiff.hal.hardware import read_yaml
from robodiff.paths import asset_dir
from robodiff.sim.env import SimEnv
from robodiff.sim.tasks import load_task

NAMESPACE = "robodiff"


def _box(feature: Feature) -> spaces.Box:
    if feature.kind == "image":
        return spaces.Box(0, 255, feature.shape, np.uint8)
    return spaces.Box(-np.inf, np.inf, feature.shape, np.dtype(feature.dtype))


class RobodiffEnv(gym.Env):
    """A robodiff MuJoCo task as a gymnasium env (the entry point of `robodiff/<task>`)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, task: str, render_mode: str | None = None, images: bool = True) -> None:
        self.sim = SimEnv(load_task(task), render=images)
        spec = self.sim.task
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": spec.fps}
        self.obs_keys = [k for k in spec.observation_keys if images or spec.features[k].kind != "image"]
        self.observation_space = spaces.Dict({k: _box(spec.features[k]) for k in self.obs_keys})
        low, high = self.sim.robot.action_limits["action"]
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)

    def _split(self, obs: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {k: obs[k] for k in self.obs_keys}, {"timestamp": obs["timestamp"]}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # draw the sim's seed from gymnasium's generator: seeded once, reproducible ever after
        obs = self.sim.reset(int(self.np_random.integers(2**31 - 1)))
        return self._split(obs)

    def step(self, action):
        obs, score, success, done, info = self.sim.step(np.asarray(action, dtype=np.float32))
        out, extra = self._split(obs)
        return out, score, bool(success), bool(done and not success), {**info, **extra}

    def render(self):
        return self.sim.render_frame(256) if self.render_mode == "rgb_array" else None

    def close(self) -> None:
        self.sim.close()


def register_tasks() -> list[str]:
    """Register every MuJoCo task YAML as `robodiff/<name>` (idempotent)."""
    ids = []
    for path in sorted(asset_dir("tasks").glob("*.yaml")):
        if read_yaml(path).get("kind", "mujoco") != "mujoco":
            continue
        env_id = f"{NAMESPACE}/{path.stem}"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="robodiff.sim.gym_envs:RobodiffEnv",
                         kwargs={"task": path.stem})
        ids.append(env_id)
    return ids


register_tasks()
