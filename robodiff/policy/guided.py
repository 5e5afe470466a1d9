"""The seam for real-time chunking: a policy that infers a chunk continuing a plan under way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from robodiff.errors import ConfigError


@runtime_checkable
class GuidedPolicy(Protocol):
    """`frozen` is `(k, A)`: the previous plan's actions for the slots `j + 1` ticks after the newest
    observation, and `weights[j]` in [0, 1] how firmly entry `n_obs_steps + j` of the returned
    `(horizon, A)` chunk must follow `frozen[j]`: 1 (the actions that execute while this inference
    runs) reproduces it, lower weights blend from the old plan into the new chunk's own actions.
    """

    def predict_action_chunk_guided(self, obs_history: dict[str, np.ndarray], frozen: np.ndarray,
                                    weights: np.ndarray | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class Guide:
    """What a guided inference request carries (see `GuidedPolicy`)."""

    frozen: np.ndarray
    weights: np.ndarray

    @classmethod
    def empty(cls) -> Guide:
        return cls(np.zeros((0, 0)), np.zeros(0))


def require_guided(policy: Any) -> None:
    if not isinstance(policy, GuidedPolicy):
        raise ConfigError("executor=rtc needs a policy with guided sampling: a diffusion policy with "
                          "policy.noise_scheduler.inference_scheduler=ddim or a consistency student (run through "
                          "the fast sampler)")
