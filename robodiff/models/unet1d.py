"""Conditional 1-D temporal UNet (Diffusion Policy's CNN denoiser) with FiLM conditioning.

The condition (sinusoidal timestep embedding + observation features) sets a per-channel scale and
bias in every residual block. `film()` and `denoise()` are split so that a sampler can compute the
conditioning of all denoising steps in one batched pass (see policy/fast_inference.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robodiff.errors import ConfigError

Film = list[tuple[torch.Tensor, torch.Tensor]]


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=t.device) * (-math.log(10000) / (half - 1)))
        angle = t.float()[:, None] * freq[None, :]
        return torch.cat([angle.sin(), angle.cos()], dim=-1)


class Conv1dBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, n_groups: int):
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(in_ch, out_ch, kernel, padding=kernel // 2),
                                   nn.GroupNorm(n_groups, out_ch), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, kernel: int, n_groups: int):
        super().__init__()
        self.blocks = nn.ModuleList([Conv1dBlock(in_ch, out_ch, kernel, n_groups),
                                     Conv1dBlock(out_ch, out_ch, kernel, n_groups)])
        self.out_ch = out_ch
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, out_ch * 2))
        self.residual_conv = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def film(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, bias = self.cond_encoder(cond).unsqueeze(-1).chunk(2, dim=1)
        return scale, bias

    def forward(self, x: torch.Tensor, film: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        scale, bias = film
        out = self.blocks[0](x) * scale + bias
        return self.blocks[1](out) + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """(B, T, in_dim) noisy actions (and any per-step inputs), (B,) timesteps, (B, To, F) obs
    features -> (B, T, A). `in_dim` defaults to `action_dim`."""

    def __init__(self, action_dim: int, global_cond_dim: int, horizon: int,
                 down_dims: list[int] = (256, 512, 1024), kernel_size: int = 5, n_groups: int = 8,
                 diffusion_step_embed_dim: int = 256, in_dim: int | None = None):
        super().__init__()
        down_dims = [int(d) for d in down_dims]
        if not down_dims:
            raise ConfigError("policy.denoiser.down_dims is empty: give one width per level, e.g. [256,512,1024]")
        if diffusion_step_embed_dim < 4 or diffusion_step_embed_dim % 2:
            # the sinusoidal embedding is half sines, half cosines, of at least two frequencies
            raise ConfigError(f"policy.denoiser.diffusion_step_embed_dim={diffusion_step_embed_dim} must be "
                              f"even and >= 4")
        factor = 2 ** (len(down_dims) - 1)
        if horizon % factor != 0:
            raise ConfigError(f"policy.horizon={horizon} must be divisible by {factor} "
                              f"(2**(len(policy.denoiser.down_dims)-1) for down_dims {down_dims})")
        if kernel_size % 2 == 0:  # "same" padding keeps the horizon only for odd kernels
            raise ConfigError(f"policy.denoiser.kernel_size={kernel_size} must be odd")
        for d in down_dims:
            if d % n_groups != 0:
                raise ConfigError(f"policy.denoiser.down_dims entry {d} is not divisible by n_groups={n_groups}")
        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(SinusoidalPosEmb(dsed), nn.Linear(dsed, dsed * 4), nn.Mish(),
                                                    nn.Linear(dsed * 4, dsed))
        cond_dim = dsed + global_cond_dim
        all_dims = [in_dim or action_dim] + down_dims
        in_out = list(zip(all_dims[:-1], all_dims[1:]))

        def block(i: int, o: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(i, o, cond_dim, kernel_size, n_groups)

        self.down_modules = nn.ModuleList()
        for ind, (d_in, d_out) in enumerate(in_out):
            last = ind == len(in_out) - 1
            self.down_modules.append(nn.ModuleList([
                block(d_in, d_out), block(d_out, d_out),
                nn.Conv1d(d_out, d_out, 3, 2, 1) if not last else nn.Identity()]))
        mid = all_dims[-1]
        self.mid_modules = nn.ModuleList([block(mid, mid), block(mid, mid)])
        self.up_modules = nn.ModuleList()
        for d_in, d_out in reversed(in_out[1:]):
            self.up_modules.append(nn.ModuleList([
                block(d_out * 2, d_in), block(d_in, d_in), nn.ConvTranspose1d(d_in, d_in, 4, 2, 1)]))
        start = down_dims[0]
        self.final_conv = nn.Sequential(Conv1dBlock(start, start, kernel_size, n_groups), nn.Conv1d(start, action_dim, 1))

    def residual_blocks(self) -> list[ConditionalResidualBlock1D]:
        blocks = [m for level in self.down_modules for m in level[:2]]
        blocks += list(self.mid_modules)
        return blocks + [m for level in self.up_modules for m in level[:2]]

    def film(self, timestep: torch.Tensor, obs_cond: torch.Tensor) -> Film:
        """Scale and bias of every residual block, for (N,) timesteps and (N, To, F) features."""
        cond = torch.cat([self.diffusion_step_encoder(timestep), obs_cond.flatten(1)], dim=-1)
        return [blk.film(cond) for blk in self.residual_blocks()]

    def denoise(self, sample: torch.Tensor, film: Film) -> torch.Tensor:
        x = sample.transpose(1, 2)
        films = iter(film)
        skips = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, next(films)), next(films))
            skips.append(x)
            x = down(x)
        for res in self.mid_modules:
            x = res(x, next(films))
        for res1, res2, up in self.up_modules:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(res2(res1(x, next(films)), next(films)))
        return self.final_conv(x).transpose(1, 2)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, obs_cond: torch.Tensor) -> torch.Tensor:
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        return self.denoise(sample, self.film(timestep.to(sample.device), obs_cond))
