"""A `kind: gym` task: any installed gymnasium env (`gym_id`) as a task robot.

`observation_map: {gym_key: our_key}` renames its observations to ours, `action_key` names our
action feature (default `action`), `success_key` the info entry that flags success (default
`is_success`). `GymTaskRobot` is the env behind the `Robot` interface: each `send_action` is one
env step, timestamps count steps at the task's fps, and the episode ends when the env says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from robodiff.errors import UserError
from robodiff.features import Feature, Features
from robodiff.hal.base import Robot


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


class GymTaskRobot(Robot):
    """A `kind: gym` task's env as a robot. The wrapped env renders what it renders: `render=False`
    cannot remove image observations."""

    def __init__(self, task: Any, render: bool = True) -> None:
        super().__init__()
        self.task = task
        self.name = f"gym env of task '{task.name}'"
        cfg = task.config
        self.mapping = {str(k): str(v) for k, v in cfg["observation_map"].items()}
        self.success_key = str(cfg["success_key"]) if cfg.get("success_key") else "is_success"
        self.action_key = task.action_key
        self.env = _make_gym(cfg, task.path, render_mode="rgb_array")
        self.fps = float(task.fps)
        self.steps = 0
        self._raw: Any = None
        self._success = False
        self._reward = 0.0
        self.ended = False
        space = self.env.action_space
        self.action_limits = {"action": (np.asarray(space.low, np.float64), np.asarray(space.high, np.float64))}

    @property
    def observation_features(self) -> Features:
        return {k: f for k, f in self.task.features.items() if f.kind != "action"}

    @property
    def action_features(self) -> Features:
        return {"action": self.task.features[self.action_key]}

    def _connect(self) -> None:
        self.reset_episode(None)

    def _disconnect(self) -> None:
        self.env.close()

    def reset_episode(self, seed: int | None) -> None:
        self._raw, _ = self.env.reset(seed=seed)
        self.steps, self._success, self._reward, self.ended = 0, False, 0.0, False

    @property
    def episode_time_s(self) -> float:
        return self.steps / self.fps

    def evaluate(self) -> tuple[float, bool]:
        return self._reward, self._success

    def _get_observation(self) -> dict[str, Any]:
        obs = {ours: np.asarray(self._raw[k], dtype=self.task.features[ours].dtype)
               for k, ours in self.mapping.items()}
        obs["timestamp"] = self.steps / self.fps
        return obs

    def _send_action(self, action: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        a = np.asarray(action["action"], dtype=np.float32)
        self._raw, reward, terminated, truncated, info = self.env.step(a)
        self.steps += 1
        self._reward = float(reward)
        self._success = bool(info.get(self.success_key, terminated))
        self.ended = bool(terminated or truncated)
        return {"action": a}

    def _hold(self) -> None:
        return None  # the env moves only when stepped: there is nothing to hold

    def render_frame(self, size: int = 256) -> np.ndarray:
        # OpenCV is imported where it is used: importing it starts its thread pool, which slows torch
        # on the same cores (1.2-1.4x on linear layers, measured 2026-12-07), and eval and deploy import this.
        import cv2

        frame = np.asarray(self.env.render())
        return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
