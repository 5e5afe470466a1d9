"""MSE-regression baseline: the same encoder and denoiser network, predicting the chunk directly.

It regresses to the mean of the demonstrations, so on multimodal data it lands between the modes;
the multimodality test uses it as the contrast to DiffusionPolicy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from robodiff.features import Features
from robodiff.policy.diffusion import ChunkPolicy, build_denoiser


class RegressionPolicy(ChunkPolicy):
    def __init__(self, policy_cfg: dict[str, Any], features: Features, stats: dict[str, dict] | None):
        super().__init__(policy_cfg, features, stats)
        self.denoiser = build_denoiser(dict(policy_cfg["denoiser"]), self.action_dim, self.obs_dim,
                                       self.horizon, self.n_obs_steps)

    def _forward(self, cond: torch.Tensor) -> torch.Tensor:
        # The denoiser's sample input is fixed at zero and its timestep at 0: a plain regressor.
        zeros = torch.zeros(cond.shape[0], self.horizon, self.action_dim, device=cond.device)
        return self.denoiser(zeros, torch.zeros(cond.shape[0], dtype=torch.long, device=cond.device), cond)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cond = self.encode_obs(batch)
        target = self.normalizer.normalize_key(self.action_key, batch[self.action_key].to(cond.device))
        return F.mse_loss(self._forward(cond), target.reshape(cond.shape[0], self.horizon, self.action_dim))

    @torch.no_grad()
    def predict_action(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        cond = self.encode_obs(obs)
        out = self.normalizer.unnormalize(self.action_key, self._forward(cond))
        return out.reshape(cond.shape[0], self.horizon, *self.features[self.action_key].shape)
