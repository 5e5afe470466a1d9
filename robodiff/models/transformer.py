"""Transformer denoiser (Diffusion Policy's time-series diffusion transformer, minimal form).

Action tokens self-attend (causally by default); the timestep token and one token per
observation step form the cross-attention memory.
"""

from __future__ import annotations

import torch
from torch import nn

from robodiff.errors import ConfigError
from robodiff.models.unet1d import SinusoidalPosEmb


class TransformerDenoiser(nn.Module):
    """(B, T, in_dim) noisy actions (and any per-step inputs), (B,) timesteps, (B, To, F) obs
    features -> (B, T, A). `in_dim` defaults to `action_dim`."""

    def __init__(self, action_dim: int, obs_dim: int, horizon: int, n_obs_steps: int, n_layer: int = 8,
                 n_head: int = 4, n_emb: int = 256, p_drop_emb: float = 0.0, p_drop_attn: float = 0.3,
                 causal_attn: bool = True, in_dim: int | None = None):
        super().__init__()
        if n_emb % n_head != 0:
            raise ConfigError(f"policy.denoiser.n_emb={n_emb} must be divisible by policy.denoiser.n_head={n_head}")
        self.input_emb = nn.Linear(in_dim or action_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.time_emb = SinusoidalPosEmb(n_emb)
        self.cond_obs_emb = nn.Linear(obs_dim, n_emb)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, 1 + n_obs_steps, n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        self.encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb))
        layer = nn.TransformerDecoderLayer(n_emb, n_head, 4 * n_emb, p_drop_attn, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, n_layer)
        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, action_dim)
        if causal_attn:
            t = torch.arange(horizon)
            s = torch.arange(1 + n_obs_steps)
            self.register_buffer("mask", torch.triu(torch.full((horizon, horizon), float("-inf")), 1),
                                 persistent=False)
            # Action t may see the timestep token and the observations up to step t.
            memory = torch.where(t[:, None] >= s[None, :] - 1, 0.0, float("-inf"))
            self.register_buffer("memory_mask", memory, persistent=False)
        else:
            self.mask = None
            self.memory_mask = None
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.cond_pos_emb, std=0.02)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, obs_cond: torch.Tensor) -> torch.Tensor:
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        time_tok = self.time_emb(timestep.to(sample.device))[:, None, :]
        cond = torch.cat([time_tok, self.cond_obs_emb(obs_cond)], dim=1)
        memory = self.encoder(self.drop(cond + self.cond_pos_emb))
        x = self.drop(self.input_emb(sample) + self.pos_emb)
        x = self.decoder(x, memory, tgt_mask=self.mask, memory_mask=self.memory_mask)
        return self.head(self.ln_f(x))
