"""The Policy protocol every controller implements (diffusion, baselines, experts, random), and
`ChunkSpec`, a chunking policy's interface read from its config without building its network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from robodiff.errors import ConfigError
from robodiff.features import Features


@runtime_checkable
class Policy(Protocol):
    n_obs_steps: int
    horizon: int
    n_action_steps: int

    def reset(self) -> None:
        """Forget any state between episodes."""

    def predict_action_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        """obs_history: key -> (n_obs_steps, *shape) raw robot units (images uint8 HWC).
        Returns (horizon, action_dim) in robot units; entry n_obs_steps-1 is the action for the
        newest observation."""


@dataclass(frozen=True)
class ChunkSpec:
    """What a controller plans with: chunk lengths, the observation keys read, the features.

    A deploy whose inference runs in another process holds this instead of a second copy of the
    network (on a GPU, a second copy of the weights and a second CUDA context)."""

    horizon: int
    n_obs_steps: int
    n_action_steps: int
    obs_keys: list[str]
    action_key: str
    features: Features

    @classmethod
    def from_config(cls, policy_cfg: dict[str, Any], features: Features) -> ChunkSpec:
        for key in ("horizon", "n_obs_steps", "n_action_steps"):
            if key not in policy_cfg:
                raise ConfigError(f"policy config has no '{key}' key")
        horizon = int(policy_cfg["horizon"])
        n_obs_steps = int(policy_cfg["n_obs_steps"])
        n_action_steps = int(policy_cfg["n_action_steps"])
        if n_obs_steps < 1 or n_action_steps < 1:
            raise ConfigError("policy.n_obs_steps and policy.n_action_steps must be >= 1")
        if n_obs_steps - 1 + n_action_steps > horizon:
            raise ConfigError(f"policy.horizon={horizon} is shorter than n_obs_steps - 1 + n_action_steps "
                              f"= {n_obs_steps - 1 + n_action_steps}")
        action_key = policy_cfg.get("action_key") or "action"
        if action_key not in features:
            raise ConfigError(f"policy.action_key '{action_key}' is not a feature (have {', '.join(features)})")
        obs_keys = policy_cfg.get("obs_keys")
        if obs_keys is None:
            obs_keys = [k for k, f in features.items() if f.kind in ("image", "lowdim")]
        for key in obs_keys:
            if key not in features or features[key].kind not in ("image", "lowdim"):
                raise ConfigError(f"policy.obs_keys entry '{key}' is not an image or low-dim feature")
        if not obs_keys:
            raise ConfigError("policy.obs_keys is empty: the features have no image or low-dim key")
        obs_keys = list(obs_keys)
        return cls(horizon, n_obs_steps, n_action_steps, obs_keys, action_key,
                   {k: features[k] for k in obs_keys + [action_key]})

    def reset(self) -> None:
        """Nothing to forget here: state, if any, lives where inference runs."""
