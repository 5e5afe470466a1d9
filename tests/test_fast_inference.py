"""The fast sampler gives the straightforward path's actions for the same noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from robodiff.errors import ConfigError
from robodiff.features import Feature
from robodiff.models.unet1d import ConditionalUnet1D
from robodiff.policy.factory import build_policy
from robodiff.policy.fast_inference import FastSampler, PackedUnet1D, ddim_coefficients

CONF = Path(__file__).resolve().parents[1] / "robodiff" / "conf" / "policy"
FEATURES = {"cam": Feature("image", (32, 32, 3), "uint8"), "state": Feature("lowdim", (3,)),
            "action": Feature("action", (2,))}
STATS = {"state": {"min": [0, 0, 0], "max": [1, 1, 1], "mean": [0.5] * 3, "std": [0.3] * 3},
         "action": {"min": [10.0, -5.0], "max": [20.0, 5.0], "mean": [15.0, 0.0], "std": [3.0, 3.0]}}
# fp32: only summation order differs (packed matmuls vs convolutions). Robot units, range 10.
FP32_ATOL = 1e-3
# bf16 weights: ~3 significant digits per layer; 2 % of the action range after 10 steps.
BF16_ATOL = 0.2

def policy_for(name: str = "diffusion_unet", prediction_type: str = "epsilon"):
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    cfg["horizon"], cfg["n_action_steps"] = 8, 4
    cfg["encoder"].update(backbone="small_cnn", crop_shape=[28, 28], num_keypoints=8)
    if name == "diffusion_unet":
        cfg["denoiser"].update(down_dims=[32, 64, 128], diffusion_step_embed_dim=32)
    else:
        cfg["denoiser"].update(n_layer=2, n_head=2, n_emb=32)
    cfg["noise_scheduler"]["prediction_type"] = prediction_type
    torch.manual_seed(0)
    return build_policy(cfg, FEATURES, STATS).eval()


def obs(n: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"cam": torch.randint(0, 256, (n, 2, 32, 32, 3), generator=g, dtype=torch.uint8),
            "state": torch.rand(n, 2, 3, generator=g)}


def test_ddim_coefficients_reproduce_diffusers_step():
    policy = policy_for()
    steps, coef = ddim_coefficients(policy)
    sched = policy.inference_scheduler
    sched.set_timesteps(policy.num_inference_steps)
    x, out = torch.randn(2, 8, 2) * 2, torch.randn(2, 8, 2)
    for t, (c_x, c_o, d_x, d_o, p_0, p_e) in zip(steps, coef.tolist()):
        expected = sched.step(out, t, x).prev_sample
        x0 = (c_x * x + c_o * out).clamp(-1, 1)
        assert torch.allclose(p_0 * x0 + p_e * (d_x * x + d_o * out), expected, atol=1e-5)


def test_packed_unet_equals_unet():
    torch.manual_seed(0)
    unet = ConditionalUnet1D(3, 10, 16, down_dims=[16, 32, 64], diffusion_step_embed_dim=16).eval()
    x, cond = torch.randn(2, 16, 3), torch.randn(2, 2, 5)
    film = unet.film(torch.tensor([3, 70]), cond)
    with torch.no_grad():
        assert torch.allclose(PackedUnet1D(unet, torch.float32)(x, film), unet.denoise(x, film), atol=1e-5)


@pytest.mark.parametrize("name,prediction", [("diffusion_unet", "epsilon"), ("diffusion_unet", "sample"),
                                             ("diffusion_transformer", "epsilon")])
def test_fast_path_equals_eager_path_fp32(name, prediction):
    policy = policy_for(name, prediction)
    fast = FastSampler(policy, precision="fp32", threads=None)
    batch = obs(2)
    noise = policy.sample_noise(2, torch.Generator().manual_seed(5))
    eager = policy.predict_action(batch, noise=noise)
    got = fast(batch, noise=noise)
    assert got.shape == (2, 8, 2)
    assert (got - eager).abs().max() < FP32_ATOL
    # Same generator, same noise: the seeded call agrees too.
    seeded = fast(batch, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(seeded, got)


def test_fast_path_bf16_within_tolerance():
    policy = policy_for()
    fast = FastSampler(policy, precision="bf16", threads=None)
    batch = obs(1)
    noise = policy.sample_noise(1, torch.Generator().manual_seed(2))
    diff = (fast(batch, noise=noise) - policy.predict_action(batch, noise=noise)).abs().max()
    assert diff < BF16_ATOL


def test_fast_sampler_snapshot_and_chunk_api():
    policy = policy_for()
    fast = FastSampler(policy, precision="fp32", threads=torch.get_num_threads())
    history = {"cam": np.zeros((2, 32, 32, 3), np.uint8), "state": np.full((2, 3), 0.5)}
    chunk = fast.predict_action_chunk(history)
    assert chunk.shape == (8, 2) and np.all(chunk >= (9.99, -5.01)) and np.all(chunk <= (20.01, 5.01))


def test_guided_sampling_keeps_the_frozen_actions_and_conditions_the_rest_on_them():
    policy = policy_for()
    fast = FastSampler(policy, precision="fp32", threads=None)
    history = {"cam": np.zeros((2, 32, 32, 3), np.uint8), "state": np.full((2, 3), 0.5)}
    batch = policy.obs_history_to_batch(history)
    noise = policy.sample_noise(1, torch.Generator().manual_seed(3))
    free = fast(batch, noise=noise)[0].numpy()
    # Nothing frozen: exactly the unguided chunk.
    nothing = fast(batch, noise=noise, guide=fast.guide(np.zeros((0, 0))))[0].numpy()
    np.testing.assert_allclose(nothing, free, atol=1e-6)
    frozen = np.array([[11.0, 4.0], [12.0, 3.0], [13.0, 2.0]])
    guided = fast(batch, noise=noise, guide=fast.guide(frozen))[0].numpy()
    n = policy.n_obs_steps
    np.testing.assert_allclose(guided[n:n + 3], frozen, atol=1e-4)
    # The denoiser saw the frozen actions: the entries around them moved too (not an overwrite).
    assert np.abs(guided[n + 3:] - free[n + 3:]).max() > 1e-3
    assert np.abs(guided[:n] - free[:n]).max() > 1e-3
    # Weight 0 guides nothing; a weight between 0 and 1 pulls part way.
    zero = fast(batch, noise=noise, guide=fast.guide(frozen, np.zeros(3)))[0].numpy()
    np.testing.assert_allclose(zero, free, atol=1e-6)
    soft = fast(batch, noise=noise, guide=fast.guide(frozen, np.array([1.0, 1.0, 0.5])))[0].numpy()
    np.testing.assert_allclose(soft[n:n + 2], frozen[:2], atol=1e-4)
    hard_only = fast(batch, noise=noise, guide=fast.guide(frozen, np.array([1.0, 1.0, 0.0])))[0].numpy()
    assert 1e-3 < np.abs(soft[n + 2] - frozen[2]).max() < np.abs(hard_only[n + 2] - frozen[2]).max()
    # The chunk API; frozen actions past the horizon are ignored.
    chunk = fast.predict_action_chunk_guided(history, np.tile(frozen[:1], (20, 1)))
    assert chunk.shape == (8, 2)
    np.testing.assert_allclose(chunk[n:], np.tile(frozen[:1], (8 - n, 1)), atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_match_the_eager_sampler_for_guided_and_unguided_calls_in_turn():
    policy = policy_for().to("cuda")
    graphed = FastSampler(policy, precision="fp32", threads=None, cuda_graph=True)
    eager = FastSampler(policy, precision="fp32", threads=None, cuda_graph=False)
    batch = obs(1)
    noise = policy.sample_noise(1, torch.Generator("cuda").manual_seed(4))
    guide = graphed.guide(np.array([[11.0, 4.0], [12.0, 3.0]]))
    for g in (None, guide, None, guide):
        torch.testing.assert_close(graphed(batch, noise=noise, guide=g), eager(batch, noise=noise, guide=g),
                                   atol=1e-4, rtol=0)
    assert len(graphed._graphs) == 2  # one capture per signature, reused in turn


def test_fast_inference_needs_ddim():
    policy = policy_for()
    policy.inference_scheduler_name = "ddpm"
    with pytest.raises(ConfigError, match="inference_scheduler=ddim"):
        FastSampler(policy)


@pytest.mark.slow
def test_bench_inference_cli_json():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "robodiff.cli", "bench", "inference", "iterations=2", "warmup=1",
                           "cases=[lowdim]", "--json"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("p50_ms", "p99_ms", "baseline_p50_ms", "baseline_p99_ms", "speedup"):
        assert result[f"cpu_lowdim_{key}"] > 0
