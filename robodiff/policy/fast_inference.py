"""Fast sampling for DiffusionPolicy (DDIM, or a consistency student's few steps): same actions
as `predict_action` for the same noise.

What the straightforward path (`DiffusionPolicy.predict_action`) pays for and this one does not:
- diffusers' `scheduler.step` per step (Python objects, dtype juggling): here the DDIM update is
  six precomputed coefficients per step in one preallocated tensor;
- the FiLM conditioning (timestep embedding + obs features through every residual block's linear
  layer) recomputed at every step: here computed for all steps in one batched pass per call,
  which reads those weights once instead of `num_inference_steps` times;
- on CPU at batch 1, `Conv1d` falls back to a slow im2col kernel: here every 1-D convolution is
  one matmul on packed weights (unfold + linear; the transposed convolution too), in bf16 when
  asked (AMX on recent Xeons halves the weight traffic, which is what batch-1 inference is bound
  by), and the image trunk runs channels_last;
- autocast casting frozen fp32 weights again at every use: convolution weights are stored in
  the inference dtype once, when the sampler is built;
- on CUDA: the whole call (normalize, encode, every DDIM step, unnormalize) is one CUDA graph
  replayed on static buffers, optionally under bf16/fp16 autocast, with pinned host buffers, and
  optionally (`compile=True`) the denoiser compiled first so the graph holds fewer kernels.

The sampler snapshots the policy's weights when it is built: rebuild it after loading new weights.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robodiff.errors import ConfigError
from robodiff.models.unet1d import ConditionalResidualBlock1D, Conv1dBlock, ConditionalUnet1D, Film
from robodiff.policy.consistency import ConsistencyScheduler, boundary_scalings
from robodiff.policy.diffusion import DiffusionPolicy
from robodiff.policy.factory import guidance_refusal

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d)


def precast_convolutions(module: nn.Module, dtype: torch.dtype) -> None:
    """Store every convolution's weights in `dtype`. Autocast keeps the low-precision copy of a
    weight only while it requires grad, so frozen fp32 weights are cast again at every use: for
    the default UNet, a weight and a bias cast per convolution, about 70 kernels per denoising
    step. Norm layers stay fp32 (autocast runs them in fp32); run the module only under autocast
    to `dtype` afterwards."""
    for m in module.modules():
        if isinstance(m, CONVOLUTIONS):
            m.to(dtype)


FAST_SCHEDULERS = ("ddim", "consistency")


def fast_sampler_fits(policy: Any) -> bool:
    """Whether the fast sampler runs this policy: a DiffusionPolicy sampled with DDIM, or a
    consistency student."""
    return isinstance(policy, DiffusionPolicy) and policy.inference_scheduler_name in FAST_SCHEDULERS


def _output_coefficients(a: torch.Tensor, prediction_type: str) -> list[float]:
    """(c_x, c_o, d_x, d_o): x0 = c_x x + c_o o and eps = d_x x + d_o o at noise level `a`."""
    if prediction_type == "epsilon":
        return [float(1 / a.sqrt()), float(-(1 - a).sqrt() / a.sqrt()), 0.0, 1.0]
    return [0.0, 1.0, float(1 / (1 - a).sqrt()), float(-a.sqrt() / (1 - a).sqrt())]


def sampler_coefficients(policy: DiffusionPolicy) -> tuple[list[int], torch.Tensor]:
    """Timesteps and, per step, (c_x, c_o, s_x, s_0, d_x, d_o, p_0, p_e) such that with model
    output o: x0 = clip(c_x x + c_o o), f = s_x x + s_0 x0, eps = d_x x + d_o o, and the next
    sample is p_0 f + p_e eps. DDIM (diffusers', eta 0): f = x0. A consistency student: f is its
    consistency function (c_skip, c_out), and eps is fresh noise instead (d_x = d_o = 0; the
    sampler draws it), none after its last step (p_e = 0)."""
    sched = policy.inference_scheduler
    sched.set_timesteps(policy.num_inference_steps)
    steps = [int(t) for t in sched.timesteps]
    alphas = policy.noise_scheduler.alphas_cumprod.double()
    rows = []
    if isinstance(sched, ConsistencyScheduler):
        for i, t in enumerate(steps):
            c_x, c_o, _, _ = _output_coefficients(alphas[t], policy.prediction_type)
            c_skip, c_out = boundary_scalings(torch.tensor(t))
            a_next = alphas[steps[i + 1]] if i + 1 < len(steps) else torch.tensor(1.0, dtype=torch.float64)
            rows.append([c_x, c_o, float(c_skip), float(c_out), 0.0, 0.0, float(a_next.sqrt()),
                         float((1 - a_next).sqrt())])
        return steps, torch.tensor(rows, dtype=torch.float32)
    ratio = sched.config.num_train_timesteps // policy.num_inference_steps
    for t in steps:
        a_prev = alphas[t - ratio] if t - ratio >= 0 else torch.as_tensor(float(sched.final_alpha_cumprod)).double()
        c_x, c_o, d_x, d_o = _output_coefficients(alphas[t], policy.prediction_type)
        rows.append([c_x, c_o, 0.0, 1.0, d_x, d_o, float(a_prev.sqrt()), float((1 - a_prev).sqrt())])
    return steps, torch.tensor(rows, dtype=torch.float32)


def cpu_has_native_bf16() -> bool:
    """The CPU computes in bf16 natively (AVX512-BF16 or AMX): bf16 autocast then trains about
    1.5x faster than fp32 (measured on a 2-core AMD EPYC with AVX512-BF16, 2026-12-07). Without it
    oneDNN emulates bf16, which is slower for training than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 where the hardware has it natively (CUDA Ampere+, CPUs with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedConv1d(nn.Module):
    """Conv1d on (B, L, C) activations as unfold + one matmul (weights packed once)."""

    def __init__(self, conv: nn.Conv1d, dtype: torch.dtype):
        super().__init__()
        self.kernel, self.stride, self.pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        self.weight = nn.Parameter(conv.weight.detach().reshape(conv.out_channels, -1).to(dtype), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach().to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel > 1 or self.stride > 1:
            x = F.pad(x, (0, 0, self.pad, self.pad)).unfold(1, self.kernel, self.stride).flatten(2)
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)


class PackedUpsample(nn.Module):
    """ConvTranspose1d(k=4, s=2, p=1) as one matmul: output 2m uses taps 1, 3 of inputs m, m-1;
    output 2m+1 uses taps 2, 0 of inputs m, m+1."""

    def __init__(self, up: nn.ConvTranspose1d, dtype: torch.dtype):
        super().__init__()
        if (up.kernel_size[0], up.stride[0], up.padding[0]) != (4, 2, 1):
            raise ConfigError("fast inference supports the UNet's ConvTranspose1d(4, 2, 1) upsampling only")
        w = up.weight.detach()  # (Cin, Cout, 4)
        zero = torch.zeros_like(w[:, :, 0])
        even = torch.cat([w[:, :, 3], w[:, :, 1], zero], dim=0)  # taps on inputs m-1, m, m+1
        odd = torch.cat([zero, w[:, :, 2], w[:, :, 0]], dim=0)
        packed = torch.stack([even.T, odd.T], dim=0).reshape(2 * w.shape[1], 3 * w.shape[0])
        self.weight = nn.Parameter(packed.to(dtype), requires_grad=False)
        self.bias = nn.Parameter(up.bias.detach().repeat(2).to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        windows = F.pad(x, (0, 0, 1, 1)).unfold(1, 3, 1)  # (B, L, C, 3)
        windows = windows.transpose(2, 3).flatten(2)  # (B, L, 3*C): input-major as packed
        out = F.linear(windows.to(self.weight.dtype), self.weight, self.bias)
        return out.reshape(b, length * 2, -1)


class PackedConvBlock(nn.Module):
    def __init__(self, block: Conv1dBlock, dtype: torch.dtype):
        super().__init__()
        conv, self.norm = block.block[0], block.block[1]
        self.conv = PackedConv1d(conv, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).float().transpose(1, 2)
        return F.mish(F.group_norm(x, self.norm.num_groups, self.norm.weight, self.norm.bias, self.norm.eps)).transpose(1, 2)


class PackedResidualBlock(nn.Module):
    def __init__(self, block: ConditionalResidualBlock1D, dtype: torch.dtype):
        super().__init__()
        self.block1 = PackedConvBlock(block.blocks[0], dtype)
        self.block2 = PackedConvBlock(block.blocks[1], dtype)
        res = block.residual_conv
        self.residual = PackedConv1d(res, dtype) if isinstance(res, nn.Conv1d) else None

    def forward(self, x: torch.Tensor, film: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        scale, bias = film  # (B, C, 1) -> broadcast over (B, L, C)
        out = self.block1(x) * scale.transpose(1, 2) + bias.transpose(1, 2)
        skip = x if self.residual is None else self.residual(x).float()
        return self.block2(out) + skip


class PackedUnet1D(nn.Module):
    """ConditionalUnet1D.denoise with activations kept (B, L, C) and packed matmul weights."""

    def __init__(self, unet: ConditionalUnet1D, dtype: torch.dtype):
        super().__init__()
        self.down = nn.ModuleList(nn.ModuleList([PackedResidualBlock(r1, dtype), PackedResidualBlock(r2, dtype),
                                                 PackedConv1d(d, dtype) if isinstance(d, nn.Conv1d) else nn.Identity()])
                                  for r1, r2, d in unet.down_modules)
        self.mid = nn.ModuleList(PackedResidualBlock(r, dtype) for r in unet.mid_modules)
        self.up = nn.ModuleList(nn.ModuleList([PackedResidualBlock(r1, dtype), PackedResidualBlock(r2, dtype),
                                               PackedUpsample(u, dtype)]) for r1, r2, u in unet.up_modules)
        self.final_block = PackedConvBlock(unet.final_conv[0], dtype)
        self.final = PackedConv1d(unet.final_conv[1], dtype)

    def forward(self, sample: torch.Tensor, film: Film) -> torch.Tensor:
        films = iter(film)
        x, skips = sample, []
        for res1, res2, down in self.down:
            x = res2(res1(x, next(films)), next(films))
            skips.append(x)
            x = down(x).float()
        for res in self.mid:
            x = res(x, next(films))
        for res1, res2, up in self.up:
            x = torch.cat([x, skips.pop()], dim=2)
            x = up(res2(res1(x, next(films)), next(films))).float()
        return self.final(self.final_block(x)).float()


class FastSampler:
    """`sampler(obs, noise=None, generator=None)` -> (B, horizon, *action_shape) robot units."""

    def __init__(self, policy: DiffusionPolicy, device: str | torch.device | None = None, precision: str = "auto",
                 threads: int | str | None = "auto", cuda_graph: bool = True, compile: bool = False):
        if not fast_sampler_fits(policy):
            raise ConfigError("fast inference needs a diffusion policy with "
                              "policy.noise_scheduler.inference_scheduler=ddim, or a consistency student")
        self.device = torch.device(device) if device is not None else policy.device
        if precision == "auto":
            precision = "bf16" if bf16_is_fast(self.device) else "fp32"
        if precision not in PRECISIONS:
            raise ConfigError(f"inference precision '{precision}' is not one of auto, {', '.join(PRECISIONS)}")
        self.precision, self.dtype = precision, PRECISIONS[precision]
        if threads == "auto":
            # Leave a core to the control loop: intra-op threads that spin on a shared core stall
            # both (measured on 2 busy cores: 2 threads ran several times slower than 1).
            threads = max(1, (os.cpu_count() or 2) - 1)
        if threads is not None and self.device.type == "cpu":
            torch.set_num_threads(int(threads))  # process-wide: torch has no per-module setting
        self.policy = copy.deepcopy(policy).to(self.device).eval().requires_grad_(False)
        self.horizon, self.action_dim = policy.horizon, policy.action_dim
        self.action_shape = tuple(policy.features[policy.action_key].shape)
        steps, coef = sampler_coefficients(self.policy)
        self.timesteps = torch.tensor(steps, device=self.device)
        self.coef = [tuple(row) for row in coef.tolist()]
        # A consistency student re-noises its estimate before every step but the first.
        self.fresh_draws = len(steps) - 1 if policy.inference_scheduler_name == "consistency" else 0
        # Why guided calls (`guide`) are refused, or None (rtc's inpainting, see `_sample`).
        self.guidance_refusal = guidance_refusal(policy.policy_cfg)
        a_first = float(self.policy.noise_scheduler.alphas_cumprod[steps[0]])
        self.first_level = (a_first ** 0.5, (1 - a_first) ** 0.5)
        self.clip = bool(self.policy.noise_scheduler.config.clip_sample)
        self.clip_range = float(self.policy.noise_scheduler.config.clip_sample_range)
        # Guides are built on the host: normalizing there spares a device round trip per call.
        self.host_normalizer = copy.deepcopy(self.policy.normalizer).cpu()
        unet = self.policy.denoiser if isinstance(self.policy.denoiser, ConditionalUnet1D) else None
        self.packed = None
        if self.device.type == "cpu":
            self.policy.obs_encoder.to(memory_format=torch.channels_last)
            if unet is not None:
                self.packed = PackedUnet1D(unet, self.dtype).eval()
        if self.dtype != torch.float32:
            precast_convolutions(self.policy.obs_encoder, self.dtype)
            if unet is not None and self.packed is None:
                precast_convolutions(unet, self.dtype)
        # On CUDA a graph still pays a few microseconds per kernel, and the UNet is hundreds of small
        # kernels per step: torch.compile fuses the norm/activation/FiLM chains between the convs.
        denoise = unet.denoise if unet is not None else self.policy.denoiser
        self._denoise = torch.compile(denoise, dynamic=False) if compile else denoise
        self.use_graph = cuda_graph and self.device.type == "cuda"
        # One captured graph (with its static buffers) per input signature: batch size, guided or not.
        self._graphs: dict[tuple, dict[str, Any]] = {}

    # The Policy protocol, so a controller can hold the sampler wherever it holds a policy.
    @property
    def n_obs_steps(self) -> int:
        return self.policy.n_obs_steps

    @property
    def n_action_steps(self) -> int:
        return self.policy.n_action_steps

    @property
    def obs_keys(self) -> list[str]:
        return self.policy.obs_keys

    @property
    def action_key(self) -> str:
        return self.policy.action_key

    @property
    def features(self) -> Any:
        return self.policy.features

    def reset(self) -> None:
        self.policy.reset()

    def _autocast(self) -> Any:
        enabled = self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    def _sample(self, obs: dict[str, torch.Tensor], noise: torch.Tensor,
                guide: tuple[torch.Tensor, torch.Tensor] | None = None,
                fresh: torch.Tensor | None = None) -> torch.Tensor:
        """`guide` = (target, mask), (B, horizon, A) normalized and (B, horizon, 1) in [0, 1].
        A prefix-conditioned policy takes it as its trained prefix (`prefix_from_guide`). Any
        other policy is guided by inpainting: before every denoising step the masked entries are
        set to the target noised to that step's level with the noise of that level (the call's
        own noise for DDIM, the step's fresh noise for a consistency student), so the model
        denoises the rest of the chunk consistently with them; the last step (noise level 0)
        returns them as given. `fresh`: (steps - 1, B, horizon, A), a consistency student's
        re-noising."""
        policy, b, k = self.policy, noise.shape[0], len(self.coef)
        prefix = None
        if policy.prefix_conditioned and guide is not None:
            prefix = policy.prefix_from_guide(*guide)
            guide = None
        with self._autocast():
            cond = policy.encode_obs(obs).float()
        denoiser = policy.denoiser
        if isinstance(denoiser, ConditionalUnet1D):
            # FiLM for every step at once: one pass over the conditioning weights per call.
            all_film = denoiser.film(self.timesteps.repeat_interleave(b), cond.repeat(k, 1, 1))
        x = noise
        if guide is not None:
            target, mask = guide
            x = x + mask * (self.first_level[0] * target + self.first_level[1] * noise - x)
        for i, (c_x, c_o, s_x, s_0, d_x, d_o, p_0, p_e) in enumerate(self.coef):
            x_in = policy.denoiser_input(x, prefix)
            if isinstance(denoiser, ConditionalUnet1D):
                film = [(s[i * b:(i + 1) * b], o[i * b:(i + 1) * b]) for s, o in all_film]
                if self.packed is not None:
                    out = self.packed(x_in, film)
                else:
                    with self._autocast():
                        out = self._denoise(x_in, film).float()
            else:
                with self._autocast():
                    out = self._denoise(x_in, self.timesteps[i], cond).float()
            x0 = c_x * x + c_o * out
            if self.clip:
                x0 = x0.clamp(-self.clip_range, self.clip_range)
            clean = x0 if s_x == 0.0 else s_x * x + s_0 * x0
            if p_e == 0.0:  # the last step
                x, level = p_0 * clean, noise
            else:
                level = noise if fresh is None else fresh[i]
                eps = level if fresh is not None else (out if d_x == 0.0 else d_x * x + d_o * out)
                x = p_0 * clean + p_e * eps
            if guide is not None:
                x = x + mask * (p_0 * target + p_e * level - x)
        if prefix is not None:
            x = policy.apply_prefix(x, prefix)
        actions = policy.normalizer.unnormalize(policy.action_key, x)
        return actions.reshape(b, self.horizon, *self.action_shape)

    def noise(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.policy.sample_noise(batch_size, generator)

    @torch.inference_mode()
    def __call__(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None,
                 guide: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`guide`: see `_sample`."""
        if guide is not None and self.guidance_refusal is not None:
            raise ConfigError(f"guided sampling (executor=rtc) needs {self.guidance_refusal}")
        obs = {k: obs[k][:, -self.policy.n_obs_steps:] for k in self.policy.obs_keys}
        b = next(iter(obs.values())).shape[0]
        if noise is None:
            noise = self.noise(b, generator)
        # Drawn after the initial noise, in the order the straightforward path draws them.
        fresh = torch.stack([self.noise(b, generator) for _ in range(self.fresh_draws)]) if self.fresh_draws else None
        if not self.use_graph:
            guide = None if guide is None else (guide[0].to(self.device), guide[1].to(self.device))
            fresh = None if fresh is None else fresh.to(self.device)
            return self._sample({k: v.to(self.device) for k, v in obs.items()}, noise.to(self.device), guide, fresh)
        # Guide and noise tensors travel as inputs of the graph; guided calls have a graph of their own.
        extra = {"__noise": noise} if fresh is None else {"__noise": noise, "__fresh": fresh}
        if guide is not None:
            extra.update({"__target": guide[0], "__mask": guide[1]})
        return self._replay(obs, extra)

    def _replay(self, obs: dict[str, torch.Tensor], extra: dict[str, torch.Tensor]) -> torch.Tensor:
        signature = tuple(sorted((k, tuple(v.shape)) for k, v in (obs | extra).items()))
        st = self._graphs.get(signature)
        if st is None:
            st = self._graphs[signature] = self._capture(obs, extra)
        for key, x in obs.items():
            st["host"][key].copy_(x)
            st["in"][key].copy_(st["host"][key], non_blocking=True)
        for key, x in extra.items():
            st["in"][key].copy_(x, non_blocking=True)
        st["graph"].replay()
        st["out_host"].copy_(st["out"], non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return st["out_host"].clone()

    def _capture(self, obs: dict[str, torch.Tensor], extra: dict[str, torch.Tensor]) -> dict[str, Any]:
        static_in = {k: v.to(self.device).clone() for k, v in (obs | extra).items()}
        host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in obs.items()}
        guide = (static_in["__target"], static_in["__mask"]) if "__mask" in static_in else None
        fresh = static_in["__fresh"] if "__fresh" in static_in else None

        def step() -> torch.Tensor:
            return self._sample({k: static_in[k] for k in obs}, static_in["__noise"], guide, fresh)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: cuDNN autotuning and allocations happen outside capture
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()
        return {"graph": graph, "in": static_in, "host": host, "out": out,
                "out_host": torch.empty(out.shape, dtype=out.dtype, pin_memory=True)}

    def predict_action_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        return self(self.policy.obs_history_to_batch(obs_history))[0].float().cpu().numpy()

    def guide(self, frozen: np.ndarray, weights: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(target, mask) for a batch of one pulling chunk entry `n_obs_steps + j` to `frozen[j]`
        (robot units, `(k, A)`) with weight `weights[j]` in [0, 1] (default 1: kept exactly);
        entries past the horizon are ignored, `k = 0` guides nothing."""
        policy = self.policy
        target = torch.zeros(1, self.horizon, self.action_dim)
        mask = torch.zeros(1, self.horizon, 1)
        frozen = np.asarray(frozen, dtype=np.float32)
        if weights is not None and len(weights) != len(frozen):
            raise ValueError(f"guide: {len(weights)} weights for {len(frozen)} actions")
        k = min(len(frozen), self.horizon - policy.n_obs_steps)
        if k > 0:
            start = policy.n_obs_steps
            values = torch.as_tensor(frozen[:k]).reshape(k, *self.action_shape)
            target[0, start:start + k] = self.host_normalizer.normalize_key(policy.action_key, values).reshape(
                k, self.action_dim)
            w = np.ones(k, np.float32) if weights is None else np.clip(np.asarray(weights, np.float32)[:k], 0, 1)
            mask[0, start:start + k, 0] = torch.as_tensor(w)
        return target, mask

    def predict_action_chunk_guided(self, obs_history: dict[str, np.ndarray], frozen: np.ndarray,
                                    weights: np.ndarray | None = None) -> np.ndarray:
        """The `GuidedPolicy` seam (real-time chunking): a chunk that keeps the actions which
        will execute while it is computed (weight 1) and blends from the rest of the previous
        plan (weights falling to 0) into its own continuation."""
        batch = self.policy.obs_history_to_batch(obs_history)
        return self(batch, guide=self.guide(frozen, weights))[0].float().cpu().numpy()


def for_deployment(policy: Any, device: str | torch.device | None = None) -> Any:
    """What runs a checkpoint on a robot: the fast sampler for a diffusion policy sampled with
    DDIM or a consistency student (the eager path's actions within the tolerance its tests
    state; torch threads stay as the caller set them), any other policy as it is."""
    if fast_sampler_fits(policy):
        return FastSampler(policy, device=device, threads=None)
    return policy
