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
from robodiff.policy.fast_inference import FastSampler, PackedUnet1D, sampler_coefficients

CONF = Path(__file__).resolve().parents[1] / "robodiff" / "conf" / "policy"
FEATURES = {"cam": Feature("image", (32, 32, 3), "uint8"), "state": Feature("lowdim", (3,)),
            "action": Feature("action", (2,))}
STATS = {"state": {"min": [0, 0, 0], "max": [1, 1, 1], "mean": [0.5] * 3, "std": [0.3] * 3},
         "action": {"min": [10.0, -5.0], "max": [20.0, 5.0], "mean": [15.0, 0.0], "std": [3.0, 3.0]}}
# fp32: only summation order differs (packed matmuls vs convolutions). Robot units, range 10.
FP32_ATOL = 1e-3
# bf16 weights: ~3 significant digits per layer; 2 % of the action range after 10 steps.
BF16_ATOL = 0.2

def policy_for(name: str = "diffusion_unet", prediction_type: str = "epsilon", max_prefix_steps: int = 0):
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    cfg["horizon"], cfg["n_action_steps"], cfg["max_prefix_steps"] = 8, 4, max_prefix_steps
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


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
def test_ddim_coefficients_reproduce_diffusers_step(prediction):
    policy = policy_for(prediction_type=prediction)
    steps, coef = sampler_coefficients(policy)
    sched = policy.inference_scheduler
    sched.set_timesteps(policy.num_inference_steps)
    x, out = torch.randn(2, 8, 2) * 2, torch.randn(2, 8, 2)
    for t, (c_x, c_o, s_x, s_0, d_x, d_o, p_0, p_e) in zip(steps, coef.tolist()):
        expected = sched.step(out, t, x).prev_sample
        x0 = s_x * x + s_0 * (c_x * x + c_o * out).clamp(-1, 1)
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


def test_prefix_conditioned_training_gives_the_prefix_clean_and_does_not_score_it():
    # Predicting the sample makes the loss's target the clean chunk, which the test knows.
    policy = policy_for(prediction_type="sample", max_prefix_steps=3).train()
    n, horizon = policy.n_obs_steps, policy.horizon
    seen = {}

    def keep(module, args, output):
        seen["input"] = args[0]
        output.retain_grad()
        seen["output"] = output

    policy.denoiser.register_forward_hook(keep)
    g = torch.Generator().manual_seed(5)
    batch = {**obs(64), "action": torch.rand(64, horizon, 2, generator=g) * torch.tensor([10.0, 10.0])
             + torch.tensor([10.0, -5.0])}
    torch.manual_seed(6)
    loss = policy.compute_loss(batch)
    loss.backward()
    x, out = seen["input"], seen["output"]
    assert x.shape == (64, horizon, 3)  # the actions and the prefix flag
    mask = x[..., 2:]
    lengths = mask[:, :, 0].sum(1)
    # The prefix starts one step after the newest observation and is 0..3 long, every length drawn.
    assert set(lengths.int().tolist()) == {0, 1, 2, 3}
    assert torch.all(mask[:, :n] == 0)
    assert torch.all(mask[:, n:].diff(dim=1) <= 0)  # contiguous from entry n_obs_steps
    clean = policy.normalizer.normalize_key("action", batch["action"])
    inside = mask[..., 0] == 1
    torch.testing.assert_close(x[..., :2][inside], clean[inside])
    assert not torch.allclose(x[..., :2][~inside], clean[~inside], atol=1e-2)  # the rest is noised
    # Only the entries the policy must produce are scored, each action value equally.
    assert torch.all(out.grad[inside] == 0) and torch.all(out.grad[~inside].abs().sum(-1) > 0)
    torch.testing.assert_close(loss, (out[~inside] - clean[~inside]).pow(2).mean())


def test_prefix_conditioned_sampler_keeps_the_prefix_and_matches_the_straightforward_path():
    policy = policy_for(max_prefix_steps=3)
    fast = FastSampler(policy, precision="fp32", threads=None)
    history = {"cam": np.zeros((2, 32, 32, 3), np.uint8), "state": np.full((2, 3), 0.5)}
    batch = policy.obs_history_to_batch(history)
    noise = policy.sample_noise(1, torch.Generator().manual_seed(3))
    frozen = np.array([[11.0, 4.0], [12.0, 3.0], [13.0, 2.0]])
    target, mask = fast.guide(frozen, np.array([1.0, 1.0, 0.5]))
    got = fast(batch, noise=noise, guide=(target, mask))[0]
    n = policy.n_obs_steps
    # The prefix is the entries of weight 1: the partial one means nothing to a trained prefix.
    np.testing.assert_allclose(got[n:n + 2].numpy(), frozen[:2], atol=1e-4)
    assert np.abs(got[n + 2].numpy() - frozen[2]).max() > 1e-2
    expected = policy.predict_action(batch, noise=noise, guide=(target, mask))[0]
    torch.testing.assert_close(got, expected, atol=FP32_ATOL, rtol=0)
    # Without a prefix it is an ordinary chunk, the same on both paths.
    torch.testing.assert_close(fast(batch, noise=noise)[0], policy.predict_action(batch, noise=noise)[0],
                               atol=FP32_ATOL, rtol=0)
    assert np.abs(fast(batch, noise=noise)[0][n + 2:].numpy() - got[n + 2:].numpy()).max() > 1e-3
    # A prefix longer than the trained one is cut to it.
    longer = np.array([[11.0, 4.0], [12.0, 3.0], [13.0, 2.0], [14.0, 1.0]])
    cut = fast(batch, noise=noise, guide=fast.guide(longer))[0]
    torch.testing.assert_close(cut, fast(batch, noise=noise, guide=fast.guide(longer[:3]))[0])


def test_prefix_settings_are_checked():
    with pytest.raises(ConfigError, match="policy.max_prefix_steps=8 must be in 0..horizon - n_obs_steps = 6"):
        policy_for(max_prefix_steps=8)
    for bad in (None, 2.5, True):
        with pytest.raises(ConfigError, match="must be an integer"):
            policy_for(max_prefix_steps=bad)
    with pytest.raises(ConfigError, match="max_prefix_steps > 0"):
        policy_for().predict_action(obs(1), guide=(torch.zeros(1, 8, 2), torch.zeros(1, 8, 1)))


def weight_casts_per_call(fast: FastSampler, batch: dict[str, torch.Tensor], noise: torch.Tensor) -> int:
    """How many times one call copies a weight of the sampler's modules to another dtype."""
    from torch.utils._python_dispatch import TorchDispatchMode

    modules = [fast.policy] + ([fast.packed] if fast.packed is not None else [])
    weights = {p.data_ptr() for m in modules for p in m.parameters()}
    casts = []

    class CountCasts(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            # Autocast's casts reach a mode as `to(dtype)` (or `_to_copy` below composite ops).
            if func in (torch.ops.aten.to.dtype, torch.ops.aten._to_copy.default) \
                    and args[0].data_ptr() in weights:
                target = args[1] if func is torch.ops.aten.to.dtype else (kwargs or {}).get("dtype")
                if target is not None and target != args[0].dtype:
                    casts.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    with CountCasts():
        fast(batch, noise=noise)
    return len(casts)


def test_low_precision_sampler_casts_no_weight_during_a_call():
    policy = policy_for()
    fast = FastSampler(policy, precision="bf16", threads=None)
    assert weight_casts_per_call(fast, obs(1), policy.sample_noise(1, torch.Generator().manual_seed(2))) == 0
    # The policy it was built from keeps its fp32 weights.
    assert all(p.dtype == torch.float32 for p in policy.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_low_precision_sampler_casts_no_weight_during_a_call():
    policy = policy_for().to("cuda")
    fast = FastSampler(policy, precision="bf16", threads=None, cuda_graph=False)
    batch = {k: v.to("cuda") for k, v in obs(1).items()}
    assert weight_casts_per_call(fast, batch, policy.sample_noise(1, torch.Generator("cuda").manual_seed(2))) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("max_prefix_steps", [0, 3])
def test_cuda_graphs_match_the_eager_sampler_for_guided_and_unguided_calls_in_turn(max_prefix_steps):
    policy = policy_for(max_prefix_steps=max_prefix_steps).to("cuda")
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
    for key in ("p50_ms", "p99_ms", "baseline_p50_ms", "baseline_p99_ms", "speedup", "onestep_p50_ms",
                "onestep_p99_ms", "onestep_speedup_vs_ddim"):
        assert result[f"cpu_lowdim_{key}"] > 0


def test_bench_inference_times_students_beside_ddim_in_the_same_run():
    from omegaconf import OmegaConf

    from robodiff.bench.inference import bench_case, default_policy_cfg, load_config

    policy_cfg = default_policy_cfg()
    policy_cfg["denoiser"].update(down_dims=[16, 32, 64], diffusion_step_embed_dim=16)
    cfg = load_config(["iterations=2", "warmup=0", "sampling_steps=[1,2]", "precision_cpu=fp32"])
    assert OmegaConf.to_container(load_config([]).sampling_steps) == [1]
    figures = bench_case("cpu", "lowdim", cfg, policy_cfg)
    for word in ("onestep", "twostep"):
        assert figures[f"cpu_lowdim_{word}_p50_ms"] > 0 and figures[f"cpu_lowdim_{word}_speedup_vs_ddim"] > 0
        # Each student's fast path gives its straightforward path's actions for the same noise.
        assert figures[f"cpu_lowdim_{word}_max_abs_action_diff"] < FP32_ATOL
    assert figures["cpu_lowdim_max_abs_action_diff"] < FP32_ATOL and "cpu_lowdim_threestep_p50_ms" not in figures
