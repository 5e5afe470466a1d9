"""The Policy protocol every controller implements (diffusion, baselines, experts, random)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


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
