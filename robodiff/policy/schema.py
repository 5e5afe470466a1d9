"""Typed schemas of the `policy` config group (conf/policy/<name>.yaml holds the defaults and
their reasons): a key that does not exist, a wrong type or a number outside its range is a
one-line error naming `policy.<key>` before a network is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf

from robodiff.config import bounded, validate
from robodiff.errors import ConfigError


@dataclass
class EncoderConfig:
    backbone: str = MISSING
    pretrained: Optional[str] = MISSING
    num_keypoints: int = bounded(ge=1)
    crop_shape: Optional[list[int]] = bounded(ge=1)
    share_encoder: bool = MISSING


@dataclass
class UnetConfig:
    type: str = MISSING
    down_dims: list[int] = bounded(ge=1)
    kernel_size: int = bounded(ge=1)
    n_groups: int = bounded(ge=1)
    diffusion_step_embed_dim: int = bounded(ge=4)


@dataclass
class TransformerConfig:
    type: str = MISSING
    n_layer: int = bounded(ge=1)
    n_head: int = bounded(ge=1)
    n_emb: int = bounded(ge=1)
    p_drop_emb: float = bounded(ge=0, lt=1)
    p_drop_attn: float = bounded(ge=0, lt=1)
    causal_attn: bool = MISSING


@dataclass
class NoiseSchedulerConfig:
    num_train_timesteps: int = bounded(ge=1)
    beta_schedule: str = MISSING
    beta_start: float = bounded(gt=0, lt=1)
    beta_end: float = bounded(gt=0, lt=1)
    clip_sample: bool = MISSING
    prediction_type: str = MISSING
    inference_scheduler: str = MISSING
    num_inference_steps: int = bounded(ge=1)


@dataclass
class NormalizerConfig:
    mode: str = MISSING


@dataclass
class EmaConfig:
    enabled: bool = MISSING
    power: float = bounded(gt=0)
    max_value: float = bounded(gt=0, le=1)
    update_after_step: int = bounded(ge=0)
    inv_gamma: float = bounded(gt=0)


@dataclass
class DistillationConfig:
    """Written by `robodiff distill` into a student's policy config: how it was made and the grid
    of teacher timesteps it samples on."""

    method: str = MISSING
    teacher: str = MISSING  # the teacher's checkpoint dir
    teacher_step: int = bounded(ge=0)
    grid_steps: int = bounded(ge=1)
    target_decay: float = bounded(ge=0, lt=1)


@dataclass
class ChunkPolicyConfig:
    name: str = MISSING
    horizon: int = bounded(ge=1)
    n_obs_steps: int = bounded(ge=1)
    n_action_steps: int = bounded(ge=1)
    obs_keys: Optional[list[str]] = MISSING
    action_key: str = MISSING
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    noise_scheduler: NoiseSchedulerConfig = field(default_factory=NoiseSchedulerConfig)
    normalizer: NormalizerConfig = field(default_factory=NormalizerConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)


@dataclass
class DiffusionUnetConfig(ChunkPolicyConfig):
    max_prefix_steps: int = bounded(ge=0)
    denoiser: UnetConfig = field(default_factory=UnetConfig)
    distillation: Optional[DistillationConfig] = MISSING


@dataclass
class DiffusionTransformerConfig(ChunkPolicyConfig):
    max_prefix_steps: int = bounded(ge=0)
    denoiser: TransformerConfig = field(default_factory=TransformerConfig)
    distillation: Optional[DistillationConfig] = MISSING


@dataclass
class RegressionConfig(ChunkPolicyConfig):
    denoiser: UnetConfig = field(default_factory=UnetConfig)


SCHEMAS: dict[str, type] = {"diffusion_unet": DiffusionUnetConfig, "diffusion_transformer": DiffusionTransformerConfig,
                            "regression": RegressionConfig}


def check_policy_config(policy_cfg: Any) -> None:
    """The policy group of a composed config against the schema of the policy it names."""
    plain = OmegaConf.to_container(policy_cfg, resolve=True) if not isinstance(policy_cfg, dict) else policy_cfg
    name = plain.get("name") if isinstance(plain, dict) else None
    if name not in SCHEMAS:
        raise ConfigError(f"config key 'policy.name' is {name!r}, not one of {', '.join(SCHEMAS)}")
    validate(OmegaConf.create(plain), SCHEMAS[name], where="policy")
