"""DiffusionPolicy: observation encoder + denoiser + diffusers noise schedulers, normalizer inside.

`ChunkPolicy` holds what every action-chunk policy shares (keys, normalizer, encoder, the
numpy-in/numpy-out `predict_action_chunk`); `DiffusionPolicy` adds denoising.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import nn

from robodiff.policy.normalizer import Normalizer
from robodiff.errors import ConfigError, UserError
from robodiff.features import Features
from robodiff.models.obs_encoder import ObsEncoder
from robodiff.models.transformer import TransformerDenoiser
from robodiff.models.unet1d import ConditionalUnet1D
from robodiff.policy.base import ChunkSpec
from robodiff.policy.consistency import ConsistencyScheduler, draw_noise

# "consistency": a student written by `robodiff distill` (policy.distillation says how).
INFERENCE_SCHEDULERS = ("ddim", "ddpm", "dpmsolver++", "consistency")
PREDICTION_TYPES = ("epsilon", "sample")


def build_denoiser(cfg: dict[str, Any], action_dim: int, obs_dim: int, horizon: int, n_obs_steps: int,
                   in_dim: int | None = None) -> nn.Module:
    kind = cfg.get("type", "unet")
    if kind == "unet":
        return ConditionalUnet1D(action_dim, obs_dim * n_obs_steps, horizon, down_dims=list(cfg["down_dims"]),
                                 kernel_size=int(cfg["kernel_size"]), n_groups=int(cfg["n_groups"]),
                                 diffusion_step_embed_dim=int(cfg["diffusion_step_embed_dim"]), in_dim=in_dim)
    if kind == "transformer":
        return TransformerDenoiser(action_dim, obs_dim, horizon, n_obs_steps, n_layer=int(cfg["n_layer"]),
                                   n_head=int(cfg["n_head"]), n_emb=int(cfg["n_emb"]),
                                   p_drop_emb=float(cfg["p_drop_emb"]), p_drop_attn=float(cfg["p_drop_attn"]),
                                   causal_attn=bool(cfg["causal_attn"]), in_dim=in_dim)
    raise ConfigError(f"policy.denoiser.type '{kind}' is not one of unet, transformer")


class ChunkPolicy(nn.Module):
    """Keys, normalizer and observation encoder; subclasses turn encoded obs into action chunks."""

    def __init__(self, policy_cfg: dict[str, Any], features: Features, stats: dict[str, dict] | None):
        super().__init__()
        self.policy_cfg = dict(policy_cfg)
        spec = ChunkSpec.from_config(policy_cfg, features)
        self.horizon, self.n_obs_steps, self.n_action_steps = spec.horizon, spec.n_obs_steps, spec.n_action_steps
        self.obs_keys, self.action_key, self.features = spec.obs_keys, spec.action_key, spec.features
        self.action_dim = int(np.prod(features[self.action_key].shape))
        if stats is not None:
            missing = [k for k, f in self.features.items() if f.kind != "image" and k not in stats]
            if missing:
                raise UserError(f"normalizer stats have no entry for '{missing[0]}'")
        self.normalizer = Normalizer(self.features, stats, policy_cfg.get("normalizer", {}).get("mode", "minmax"))
        self.obs_encoder = ObsEncoder(self.features, self.obs_keys, dict(policy_cfg["encoder"]))
        self.obs_dim = self.obs_encoder.out_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def reset(self) -> None:
        """No recurrent state: each chunk depends only on the observation history given."""

    def encode_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw obs (B, >=n_obs_steps, ...) -> encoder features (B, n_obs_steps, obs_dim)."""
        device = self.device
        raw = {k: obs[k][:, -self.n_obs_steps:].to(device, non_blocking=True) for k in self.obs_keys}
        return self.obs_encoder(self.normalizer.normalize(raw))

    def obs_history_to_batch(self, obs_history: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Validate one robot's history and make a batch of one, edge-padding a short history."""
        batch = {}
        for key in self.obs_keys:
            if key not in obs_history:
                raise UserError(f"observation has no '{key}' (policy needs {', '.join(self.obs_keys)})")
            x = np.asarray(obs_history[key])
            shape = tuple(self.features[key].shape)
            if x.shape == shape:
                x = x[None]
            if tuple(x.shape[1:]) != shape or len(x) == 0:
                raise UserError(f"observation '{key}' has shape {list(x.shape)}, expected (steps, {', '.join(map(str, shape))})")
            x = x[-self.n_obs_steps:]
            if len(x) < self.n_obs_steps:
                x = np.concatenate([np.repeat(x[:1], self.n_obs_steps - len(x), axis=0), x])
            dtype = torch.uint8 if self.features[key].kind == "image" else torch.float32
            batch[key] = torch.as_tensor(np.ascontiguousarray(x)).to(dtype)[None]
        return batch

    def predict_action(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def predict_action_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        return self.predict_action(self.obs_history_to_batch(obs_history))[0].float().cpu().numpy()


def inference_scheduler_name(policy_cfg: dict[str, Any]) -> str:
    """The sampler a diffusion policy config asks for (DDIM unless it names another)."""
    return str(dict(policy_cfg.get("noise_scheduler") or {}).get("inference_scheduler", "ddim"))


def max_sampling_steps(policy_cfg: dict[str, Any]) -> int:
    """The most denoising steps a diffusion policy of this config samples with: a consistency
    student's distillation grid (it was trained at those timesteps only), else every training
    timestep."""
    distillation = policy_cfg.get("distillation")
    if distillation:
        return int(distillation["grid_steps"])
    return int(policy_cfg["noise_scheduler"]["num_train_timesteps"])


class DiffusionPolicy(ChunkPolicy):
    """With `max_prefix_steps` > 0 the policy is trained for real-time chunking: each training
    chunk gives the denoiser, clean, the first 0..max_prefix_steps actions after the newest
    observation (drawn per sample), flagged by one more input channel, and the loss covers the
    rest. At deployment that prefix is the actions the robot plays while the chunk is computed,
    so the chunk continues them (`prefix`; see FastSampler.guide)."""

    def __init__(self, policy_cfg: dict[str, Any], features: Features, stats: dict[str, dict] | None):
        super().__init__(policy_cfg, features, stats)
        self.max_prefix_steps = policy_cfg.get("max_prefix_steps", 0)
        if isinstance(self.max_prefix_steps, bool) or not isinstance(self.max_prefix_steps, int):
            raise ConfigError(f"policy.max_prefix_steps={self.max_prefix_steps!r} must be an integer")
        if not 0 <= self.max_prefix_steps <= self.horizon - self.n_obs_steps:
            raise ConfigError(f"policy.max_prefix_steps={self.max_prefix_steps} must be in 0..horizon - n_obs_steps "
                              f"= {self.horizon - self.n_obs_steps}")
        self.denoiser = build_denoiser(dict(policy_cfg["denoiser"]), self.action_dim, self.obs_dim,
                                       self.horizon, self.n_obs_steps,
                                       in_dim=self.action_dim + int(self.prefix_conditioned))
        sched = dict(policy_cfg["noise_scheduler"])
        self.prediction_type = sched.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"policy.noise_scheduler.prediction_type '{self.prediction_type}' is not one of "
                              f"{', '.join(PREDICTION_TYPES)}")
        self.inference_scheduler_name = inference_scheduler_name(policy_cfg)
        if self.inference_scheduler_name not in INFERENCE_SCHEDULERS:
            raise ConfigError(f"policy.noise_scheduler.inference_scheduler '{self.inference_scheduler_name}' "
                              f"is not one of {', '.join(INFERENCE_SCHEDULERS)}")
        self.num_inference_steps = int(sched.get("num_inference_steps", 10))
        common = dict(num_train_timesteps=int(sched["num_train_timesteps"]), beta_schedule=sched["beta_schedule"],
                      beta_start=float(sched.get("beta_start", 1e-4)), beta_end=float(sched.get("beta_end", 0.02)),
                      prediction_type=self.prediction_type)
        distilled = bool(policy_cfg.get("distillation"))
        if distilled != (self.inference_scheduler_name == "consistency"):
            raise ConfigError("policy.noise_scheduler.inference_scheduler=consistency samples a student written by "
                              "`robodiff distill` (policy.distillation), and a student samples with it only")
        most = max_sampling_steps(policy_cfg)
        if not 1 <= self.num_inference_steps <= most:
            raise ConfigError(f"policy.noise_scheduler.num_inference_steps={self.num_inference_steps} must be in "
                              f"1..{most}")
        clip = bool(sched.get("clip_sample", True))
        self.noise_scheduler = DDPMScheduler(**common, clip_sample=clip)
        if distilled:
            self.inference_scheduler = ConsistencyScheduler(self.noise_scheduler.alphas_cumprod, most,
                                                            self.prediction_type, clip)
        elif self.inference_scheduler_name == "ddim":
            self.inference_scheduler = DDIMScheduler(**common, clip_sample=clip, set_alpha_to_one=True, steps_offset=0)
        elif self.inference_scheduler_name == "ddpm":
            self.inference_scheduler = DDPMScheduler(**common, clip_sample=clip)
        else:
            # Thresholding at 1.0 is DPM-Solver's counterpart of clip_sample: x0 kept in [-1, 1].
            self.inference_scheduler = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++",
                                                                   thresholding=clip, sample_max_value=1.0)

    @property
    def prefix_conditioned(self) -> bool:
        return self.max_prefix_steps > 0

    def prefix_from_guide(self, target: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix a guide (normalized target, (B, horizon, 1) weights) gives this policy: the
        entries of weight 1 from `n_obs_steps` on, at most `max_prefix_steps` of them (what
        training draws; partial weights mean nothing to it, and entries further on play before
        the chunk is back, so they are dropped on arrival anyway)."""
        j = torch.arange(self.horizon, device=weights.device) - self.n_obs_steps
        window = ((j >= 0) & (j < self.max_prefix_steps)).to(weights.dtype)[None, :, None]
        return target, (weights >= 1.0).to(weights.dtype) * window

    @staticmethod
    def apply_prefix(x: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        target, mask = prefix
        return x + mask * (target - x)

    def denoiser_input(self, x: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """What the denoiser reads for chunk `x`: as is, or for a prefix-conditioned policy with
        the prefix (normalized target, (B, horizon, 1) 0/1 mask) set in clean and the mask as one
        more channel."""
        if not self.prefix_conditioned:
            return x
        if prefix is None:
            return torch.cat([x, x.new_zeros(*x.shape[:-1], 1)], dim=-1)
        return torch.cat([self.apply_prefix(x, prefix), prefix[1]], dim=-1)

    def random_prefix_mask(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """(B, horizon, 1): ones on entries n_obs_steps .. n_obs_steps + k - 1, k uniform in
        0..max_prefix_steps per sample (entry n_obs_steps is the action one period after the
        newest observation, the first a real-time executor can still be playing from its old plan)."""
        k = torch.randint(0, self.max_prefix_steps + 1, (batch_size, 1), device=device)
        j = torch.arange(self.horizon, device=device)[None] - self.n_obs_steps
        return ((j >= 0) & (j < k)).float()[..., None]

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cond = self.encode_obs(batch)
        trajectory = self.normalizer.normalize_key(self.action_key, batch[self.action_key].to(cond.device))
        trajectory = trajectory.reshape(trajectory.shape[0], self.horizon, self.action_dim)
        noise = torch.randn_like(trajectory)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (trajectory.shape[0],),
                          device=trajectory.device)
        noisy = self.noise_scheduler.add_noise(trajectory, noise, t)
        target = noise if self.prediction_type == "epsilon" else trajectory
        if not self.prefix_conditioned:
            return F.mse_loss(self.denoiser(noisy, t, cond), target)
        mask = self.random_prefix_mask(trajectory.shape[0], trajectory.device)
        pred = self.denoiser(self.denoiser_input(noisy, (trajectory, mask)), t, cond)
        free = 1.0 - mask  # the prefix is given, not predicted
        return ((pred - target).pow(2) * free).sum() / (free.sum() * self.action_dim)

    def sample_noise(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise (B, horizon, A), drawn on the generator's device so seeded runs repeat anywhere."""
        return draw_noise((batch_size, self.horizon, self.action_dim), generator, self.device)

    @torch.no_grad()
    def predict_action(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                       noise: torch.Tensor | None = None,
                       guide: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The straightforward sampler: the inference scheduler's step in the loop (diffusers' for
        a trained policy, `ConsistencyScheduler` for a student), fp32. Robot units.
        `guide` (normalized target, weights), prefix-conditioned policies only: the prefix that
        `prefix_from_guide` reads from it."""
        if guide is not None and not self.prefix_conditioned:
            raise ConfigError("a prefix needs a policy trained with policy.max_prefix_steps > 0")
        cond = self.encode_obs(obs)
        trajectory = noise.to(cond.device) if noise is not None else self.sample_noise(cond.shape[0], generator)
        prefix = None
        if guide is not None:
            prefix = self.prefix_from_guide(guide[0].to(cond.device), guide[1].to(cond.device))
        scheduler = self.inference_scheduler
        scheduler.set_timesteps(self.num_inference_steps)
        for t in scheduler.timesteps:
            out = self.denoiser(self.denoiser_input(trajectory, prefix), t.to(cond.device), cond)
            trajectory = scheduler.step(out, t, trajectory, generator=generator).prev_sample
        if prefix is not None:
            trajectory = self.apply_prefix(trajectory, prefix)
        return self.normalizer.unnormalize(self.action_key, trajectory).reshape(
            trajectory.shape[0], self.horizon, *self.features[self.action_key].shape)
