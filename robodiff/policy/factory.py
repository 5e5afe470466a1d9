"""`build_policy(policy_cfg, features, stats)`: the policy named by `policy_cfg["name"]`."""

from __future__ import annotations

from typing import Any

from torch import nn

from robodiff.config import to_dict
from robodiff.errors import ConfigError
from robodiff.features import Features
from robodiff.policy.diffusion import DiffusionPolicy, inference_scheduler_name, max_sampling_steps
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


def guidance_refusal(policy_cfg: dict[str, Any]) -> str | None:
    """None when a policy of this config samples chunks guided by the plan under way (`executor=rtc`,
    through the fast sampler), else what guided sampling needs and what this config is instead.
    Inpainting sets the guided entries at each step's noise level: a consistency student sampled
    in one step has no level between its noise and its answer to set them at; a student of a
    prefix-conditioned teacher takes them as its prefix instead."""
    name = policy_cfg.get("name")
    scheduler = inference_scheduler_name(policy_cfg)
    if POLICIES.get(name) is not DiffusionPolicy or scheduler not in ("ddim", "consistency"):
        return (f"a diffusion policy sampled with DDIM or a consistency student; this one has policy '{name}' "
                f"with inference_scheduler '{scheduler}'")
    steps = int(policy_cfg["noise_scheduler"]["num_inference_steps"])
    if scheduler == "consistency" and steps == 1 and not policy_cfg.get("max_prefix_steps"):
        return ("a consistency student sampled in 2 or more steps (inpainting needs a noise level between "
                "steps) or one distilled from a teacher trained with policy.max_prefix_steps; this one samples "
                "in 1 step (use sampling_steps=2)")
    return None


def with_sampling_steps(policy_cfg: dict[str, Any], steps: int | None) -> dict[str, Any]:
    """The config sampled with `steps` denoising steps (`sampling_steps=`: DDIM steps for a
    teacher, consistency steps for a student; None keeps the config's)."""
    if steps is None:
        return policy_cfg
    name = policy_cfg.get("name")
    if POLICIES.get(name) is not DiffusionPolicy:
        raise ConfigError(f"sampling_steps={steps} is for a diffusion policy; this checkpoint is a '{name}' policy")
    most = max_sampling_steps(policy_cfg)
    if not 1 <= int(steps) <= most:
        what = "its distillation grid" if policy_cfg.get("distillation") else "num_train_timesteps"
        raise ConfigError(f"sampling_steps={steps} must be in 1..{most} for this checkpoint ({what})")
    return {**policy_cfg, "noise_scheduler": {**policy_cfg["noise_scheduler"], "num_inference_steps": int(steps)}}
