"""`build_policy(policy_cfg, features, stats)`: the policy named by `policy_cfg["name"]`."""

from __future__ import annotations

from typing import Any

from torch import nn

from robodiff.config import to_dict
from robodiff.errors import ConfigError
from robodiff.features import Features
from robodiff.policy.diffusion import DiffusionPolicy, inference_scheduler_name
from robodiff.policy.regression import RegressionPolicy

POLICIES = {"diffusion_unet": DiffusionPolicy, "diffusion_transformer": DiffusionPolicy,
            "regression": RegressionPolicy}


def build_policy(policy_cfg: dict[str, Any], features: Features, stats: dict[str, dict] | None = None) -> nn.Module:
    """stats may be None when the weights (normalizer buffers included) are loaded afterwards."""
    if hasattr(policy_cfg, "items") and not isinstance(policy_cfg, dict):
        policy_cfg = to_dict(policy_cfg)
    name = policy_cfg.get("name")
    if name not in POLICIES:
        raise ConfigError(f"policy.name '{name}' is not one of {', '.join(POLICIES)}")
    for key in ("encoder", "denoiser"):  # the chunk lengths are ChunkSpec's to check
        if key not in policy_cfg:
            raise ConfigError(f"policy config has no '{key}' key")
    return POLICIES[name](policy_cfg, features, stats)


def samples_with_ddim(policy_cfg: dict[str, Any]) -> bool:
    """Whether the config builds a DiffusionPolicy sampled with DDIM: what the fast sampler, and
    so guided sampling (`executor=rtc`), runs."""
    return POLICIES.get(policy_cfg.get("name")) is DiffusionPolicy and inference_scheduler_name(policy_cfg) == "ddim"
