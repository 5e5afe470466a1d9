"""Gymnasium, both ways.

- Every MuJoCo task is registered as `robodiff/<task>` when this module is imported:
  `gymnasium.make("robodiff/push_block")` gives a Dict observation space (the task's observation
  features; the timestamp goes to `info`) and a Box action space (the robot's limits). The reward is
  the task's score; `terminated` on success, `truncated` at the step limit.
- A `kind: gym` task YAML wraps any installed gymnasium env (`gym_id`) for evaluation:
  `observation_map: {gym_key: our_key}` renames its observations to ours, `action_key` names our
  action feature (default `action`), `success_key` the info entry that flags success
  (default `is_success`). `GymTaskEnv` gives it the SimEnv API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from robodiff.errors import UserError
from robodiff.features import Feature, Features
from robodiff.hal.hardware import read_yaml
from robodiff.paths import asset_dir
from robodiff.sim.env import SimEnv
from robodiff.sim.tasks import TaskSpec, load_task

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
        hw = self.sim.robot.hardware
        self.action_space = spaces.Box(hw.action_low.astype(np.float32), hw.action_high.astype(np.float32),
                                       dtype=np.float32)

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


def _make_gym(cfg: dict[str, Any], path: Path | None, **kw: Any) -> gym.Env:
    try:
        return gym.make(cfg["gym_id"], **(cfg.get("gym_kwargs") or {}), **kw)
    except gym.error.Error as exc:
        raise UserError(f"{path}: gym_id '{cfg['gym_id']}' cannot be made ({str(exc).splitlines()[0]})") from None


def _feature_of(space: gym.Space, what: str, path: Path) -> Feature:
    if not isinstance(space, spaces.Box):
        raise UserError(f"{path}: {what} is a {type(space).__name__} space; only Box spaces map to features")
    if space.dtype == np.uint8 and len(space.shape) == 3:
        return Feature("image", space.shape, "uint8")
    return Feature("lowdim", space.shape, "float32")


def gym_task_features(cfg: dict[str, Any], path: Path) -> Features:
    """Our features for a `kind: gym` task; a mapping key the env does not have is named."""
    mapping = cfg["observation_map"]
    if not isinstance(mapping, dict) or not mapping:
        raise UserError(f"{path}: 'observation_map' must map gym observation keys to ours")
    env = _make_gym(cfg, path)
    try:
        obs_space = env.observation_space
        if not isinstance(obs_space, spaces.Dict):
            raise UserError(f"{path}: gym env '{cfg['gym_id']}' has a {type(obs_space).__name__} "
                            "observation space; observation_map needs a Dict space")
        features: Features = {}
        for gym_key, ours in mapping.items():
            if gym_key not in obs_space.spaces:
                raise UserError(f"{path}: observation_map key '{gym_key}' is not an observation of "
                                f"gym env '{cfg['gym_id']}' (has: {', '.join(obs_space.spaces)})")
            features[str(ours)] = _feature_of(obs_space[gym_key], f"observation '{gym_key}'", path)
        action = _feature_of(env.action_space, "the action space", path)
        features[str(cfg.get("action_key", "action"))] = Feature("action", action.shape, "float32")
    finally:
        env.close()
    return features


class GymTaskEnv:
    """A `kind: gym` task behind the SimEnv API (reset / step / render_frame / task / close).

    The wrapped env renders what it renders: `render=False` cannot remove image observations."""

    def __init__(self, task: TaskSpec, render: bool = True) -> None:
        self.task = task
        cfg = task.config
        self.mapping = {str(k): str(v) for k, v in cfg["observation_map"].items()}
        self.success_key = str(cfg.get("success_key", "is_success"))
        self.env = _make_gym(cfg, task.path, render_mode="rgb_array")
        self.steps = 0

    @property
    def action_space(self) -> gym.Space:
        return self.env.action_space

    def _obs(self, raw: dict[str, Any]) -> dict[str, Any]:
        obs = {ours: np.asarray(raw[k], dtype=self.task.features[ours].dtype) for k, ours in self.mapping.items()}
        obs["timestamp"] = self.steps / self.task.fps
        return obs

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        self.steps = 0
        raw, _ = self.env.reset(seed=seed)
        return self._obs(raw)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        raw, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        self.steps += 1
        success = bool(info.get(self.success_key, terminated))
        done = bool(terminated or truncated or self.steps >= self.task.max_steps)
        return self._obs(raw), float(reward), success, done, {**info, "steps": self.steps}

    def render_frame(self, size: int = 256) -> np.ndarray:
        frame = np.asarray(self.env.render())
        return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)

    def close(self) -> None:
        self.env.close()


register_tasks()
