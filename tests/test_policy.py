"""DiffusionPolicy / regression baseline through build_policy, on small configs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from robodiff.errors import ConfigError, UserError
from robodiff.features import Feature
from robodiff.policy.base import Policy
from robodiff.policy.factory import build_policy

CONF = Path(__file__).resolve().parents[1] / "robodiff" / "conf" / "policy"

FEATURES = {"cam": Feature("image", (32, 32, 3), "uint8"), "state": Feature("lowdim", (3,)),
            "action": Feature("action", (2,))}
STATS = {"state": {"min": [0, 0, 0], "max": [1, 1, 1], "mean": [0.5] * 3, "std": [0.3] * 3},
         "action": {"min": [10.0, -5.0], "max": [20.0, 5.0], "mean": [15.0, 0.0], "std": [3.0, 3.0]}}

def small_cfg(name: str = "diffusion_unet", **changes) -> dict:
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    cfg["horizon"], cfg["n_action_steps"] = 8, 4
    cfg["encoder"].update(backbone="small_cnn", crop_shape=[28, 28], num_keypoints=8)
    if cfg["denoiser"]["type"] == "unet":
        cfg["denoiser"].update(down_dims=[16, 32], diffusion_step_embed_dim=16)
    else:
        cfg["denoiser"].update(n_layer=1, n_head=2, n_emb=16)
    cfg.update(changes)
    return cfg


def batch(n: int = 4, seed: int = 0, horizon: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"cam": torch.randint(0, 256, (n, 2, 32, 32, 3), generator=g, dtype=torch.uint8),
            "state": torch.rand(n, 2, 3, generator=g),
            "action": torch.tensor([10.0, -5.0]) + 10 * torch.rand(n, horizon, 2, generator=g)}


def test_yaml_defaults_match_the_reference():
    cfg = yaml.safe_load((CONF / "diffusion_unet.yaml").read_text())
    assert (cfg["horizon"], cfg["n_obs_steps"], cfg["n_action_steps"]) == (16, 2, 8)
    assert cfg["encoder"] == {"backbone": "resnet18", "pretrained": None, "num_keypoints": 32,
                              "crop_shape": [84, 84], "share_encoder": False}
    assert cfg["denoiser"]["down_dims"] == [256, 512, 1024] and cfg["denoiser"]["kernel_size"] == 5
    assert cfg["denoiser"]["n_groups"] == 8
    ns = cfg["noise_scheduler"]
    assert (ns["num_train_timesteps"], ns["beta_schedule"], ns["prediction_type"]) == (100, "squaredcos_cap_v2", "epsilon")
    assert (ns["inference_scheduler"], ns["num_inference_steps"]) == ("ddim", 10)
    assert (cfg["ema"]["power"], cfg["ema"]["max_value"]) == (0.75, 0.9999)
    for name in ("diffusion_transformer", "regression"):
        assert yaml.safe_load((CONF / f"{name}.yaml").read_text())["name"] == name


@pytest.mark.parametrize("name", ["diffusion_unet", "diffusion_transformer", "regression"])
def test_build_loss_and_predict(name):
    torch.manual_seed(0)
    policy = build_policy(small_cfg(name), FEATURES, STATS)
    assert isinstance(policy, Policy)
    assert policy.obs_keys == ["cam", "state"] and policy.horizon == 8
    loss = policy.compute_loss(batch())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in policy.denoiser.parameters() if p.requires_grad)
    policy.eval()
    actions = policy.predict_action({k: v for k, v in batch(2).items() if k != "action"})
    assert actions.shape == (2, 8, 2)
    assert any(k.startswith("normalizer.") for k in policy.state_dict())


def test_loss_decreases_when_overfitting_a_tiny_batch():
    torch.manual_seed(0)
    lowdim = {k: FEATURES[k] for k in ("state", "action")}  # images add minutes here, nothing to the check
    policy = build_policy(small_cfg(), lowdim, STATS)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    data = {k: v for k, v in batch(8).items() if k != "cam"}

    def fixed_noise_loss() -> float:
        # Same timesteps, noise and crops each time, so the comparison is not luck of the draw.
        torch.manual_seed(123)
        with torch.no_grad():
            return sum(policy.compute_loss(data).item() for _ in range(4)) / 4

    before = fixed_noise_loss()
    for _ in range(80):
        loss = policy.compute_loss(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_noise_loss() < 0.5 * before


def test_same_generator_same_actions():
    torch.manual_seed(0)
    policy = build_policy(small_cfg(), FEATURES, STATS).eval()
    obs = {k: v for k, v in batch(1).items() if k != "action"}
    a = policy.predict_action(obs, generator=torch.Generator().manual_seed(3))
    b = policy.predict_action(obs, generator=torch.Generator().manual_seed(3))
    c = policy.predict_action(obs, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    torch.manual_seed(0)
    again = build_policy(small_cfg(), FEATURES, STATS).eval()
    assert torch.equal(again.predict_action(obs, generator=torch.Generator().manual_seed(3)), a)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "dpmsolver++"])
def test_actions_come_back_in_robot_units(scheduler):
    cfg = small_cfg()
    cfg["noise_scheduler"] = {**cfg["noise_scheduler"], "inference_scheduler": scheduler}
    torch.manual_seed(0)
    policy = build_policy(cfg, FEATURES, STATS).eval()
    history = {"cam": np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
               "state": np.full((2, 3), 0.5)}
    chunk = policy.predict_action_chunk(history)
    assert chunk.shape == (8, 2) and chunk.dtype == np.float32
    # The schedulers clip the normalized sample to [-1, 1], i.e. to the action range in robot units.
    assert np.all(chunk >= (9.99, -5.01)) and np.all(chunk <= (20.01, 5.01))
    assert chunk[:, 0].mean() > 5  # not left in normalized [-1, 1] units


def test_normalizer_round_trip_inside_the_policy():
    policy = build_policy(small_cfg(), FEATURES, STATS)
    actions = batch(3)["action"]
    norm = policy.normalizer.normalize_key("action", actions)
    assert norm.min() >= -1.0001 and norm.max() <= 1.0001
    assert torch.allclose(policy.normalizer.unnormalize("action", norm), actions, atol=1e-4)
    # Weights loaded later bring the stats with them.
    blank = build_policy(small_cfg(), FEATURES, None)
    blank.load_state_dict(policy.state_dict())
    assert torch.allclose(blank.normalizer.normalize_key("action", actions), norm)


def test_obs_history_checks_and_padding():
    policy = build_policy(small_cfg(), FEATURES, STATS).eval()
    one = {"cam": np.zeros((1, 32, 32, 3), np.uint8), "state": np.zeros((1, 3))}
    b = policy.obs_history_to_batch(one)
    assert b["cam"].shape == (1, 2, 32, 32, 3) and b["cam"].dtype == torch.uint8
    long = {"cam": np.zeros((5, 32, 32, 3), np.uint8), "state": np.arange(15.0).reshape(5, 3)}
    assert torch.equal(policy.obs_history_to_batch(long)["state"][0], torch.tensor([[9.0, 10, 11], [12, 13, 14]]))
    with pytest.raises(UserError, match="'state'"):
        policy.predict_action_chunk({"cam": one["cam"]})
    with pytest.raises(UserError, match="'cam' has shape"):
        policy.predict_action_chunk({"cam": np.zeros((2, 16, 16, 3), np.uint8), "state": one["state"]})


def test_bad_configs_name_the_key():
    odd = small_cfg(horizon=6, n_action_steps=2)
    odd["denoiser"]["down_dims"] = [16, 32, 64]  # needs a horizon divisible by 4
    with pytest.raises(ConfigError, match="policy.horizon=6"):
        build_policy(odd, FEATURES, STATS)
    with pytest.raises(ConfigError, match="policy.horizon"):
        build_policy(small_cfg(horizon=4, n_action_steps=4), FEATURES, STATS)
    with pytest.raises(ConfigError, match="policy.name"):
        build_policy({**small_cfg(), "name": "nope"}, FEATURES, STATS)
    with pytest.raises(ConfigError, match="policy.obs_keys"):
        build_policy(small_cfg(obs_keys=["depth"]), FEATURES, STATS)
    bad = small_cfg()
    bad["noise_scheduler"] = {**bad["noise_scheduler"], "prediction_type": "v"}
    with pytest.raises(ConfigError, match="prediction_type"):
        build_policy(bad, FEATURES, STATS)
    with pytest.raises(UserError, match="'action'"):
        build_policy(small_cfg(), FEATURES, {"state": STATS["state"]})


def test_sample_prediction_trains():
    cfg = small_cfg()
    cfg["noise_scheduler"] = {**cfg["noise_scheduler"], "prediction_type": "sample"}
    policy = build_policy(copy.deepcopy(cfg), FEATURES, STATS)
    assert torch.isfinite(policy.compute_loss(batch()))
