"""Consistency sampling: how a student distilled from a DDIM teacher (`robodiff distill`) samples.

The student is the teacher's network read through the skip parameterisation of Latent Consistency
Models: f(x_t, t) = c_skip(t) x_t + c_out(t) x0(out), x0(out) the clean chunk its output implies
(epsilon or sample prediction, as the teacher's). It is trained to map every point x_t of the
teacher's DDIM trajectory, at the timesteps of the teacher's DDIM grid, to the trajectory's clean
end. The scalings are functions of tau = t + 1, which is 0 at the clean end (DDIM's final step
goes to alpha = 1, below DDPM timestep 0): there c_skip = 1 and c_out = 0, so f is the identity at
the clean end by construction (the boundary condition), while at every grid timestep the student
is evaluated at c_skip is below 0.3 % and f is its x0 estimate.

Sampling in k steps (multistep consistency sampling, Song et al. 2023, algorithm 1): f at the
grid's highest timestep from pure noise; for k > 1 that estimate is noised again with fresh noise
to the next of k timesteps spread evenly over the grid (LCM's choice), and f applied again.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

# LCM's constants: with the data's std at 0.5 and timesteps scaled by 10, c_skip has fallen to
# 0.25 % one DDPM step away from the clean end.
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def draw_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise on `device`, drawn on the generator's device so seeded runs repeat anywhere."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)


def ddim_grid(num_train_timesteps: int, grid_steps: int) -> list[int]:
    """The timesteps of DDIM with `grid_steps` steps (diffusers' "leading" spacing, offset 0),
    highest first: the points a student is distilled on."""
    ratio = num_train_timesteps // grid_steps
    return [i * ratio for i in reversed(range(grid_steps))]


def sampling_timesteps(num_train_timesteps: int, grid_steps: int, steps: int) -> list[int]:
    """`steps` timesteps of the grid, evenly spaced by index from its highest (LCM's schedule)."""
    grid = ddim_grid(num_train_timesteps, grid_steps)
    return [grid[i * grid_steps // steps] for i in range(steps)]


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) at DDPM timesteps `t` (float64); t = -1 is the clean end, where they are (1, 0)."""
    tau = (t.double() + 1.0) * TIMESTEP_SCALING
    c_skip = SIGMA_DATA ** 2 / (tau ** 2 + SIGMA_DATA ** 2)
    c_out = tau / (tau ** 2 + SIGMA_DATA ** 2).sqrt()
    return c_skip, c_out


def predicted_x0(out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The clean chunk a network output at noise level `alpha` (alpha_cumprod, broadcastable) implies."""
    if prediction_type == "epsilon":
        return (x - (1 - alpha).sqrt() * out) / alpha.sqrt()
    return out


def predicted_eps(out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The noise a network output implies (alpha < 1: at the clean end there is no noise to imply)."""
    if prediction_type == "epsilon":
        return out
    return (x - alpha.sqrt() * out) / (1 - alpha).sqrt()


class ConsistencyScheduler:
    """Multistep consistency sampling behind the interface `DiffusionPolicy.predict_action` drives
    diffusers' schedulers through: `set_timesteps(k)`, `timesteps`, `step(out, t, x, generator)
    .prev_sample`. The re-noising of every step but the last draws from `generator` as
    `DiffusionPolicy.sample_noise` does, so the fast sampler can draw the same noise."""

    def __init__(self, alphas_cumprod: torch.Tensor, grid_steps: int, prediction_type: str, clip_sample: bool,
                 clip_sample_range: float = 1.0):
        self.alphas_cumprod = alphas_cumprod.double()
        self.num_train_timesteps = len(alphas_cumprod)
        self.grid_steps = int(grid_steps)
        self.prediction_type = prediction_type
        self.clip_sample, self.clip_sample_range = bool(clip_sample), float(clip_sample_range)
        self.timesteps = torch.zeros(0, dtype=torch.long)

    def set_timesteps(self, steps: int) -> None:
        self.timesteps = torch.tensor(sampling_timesteps(self.num_train_timesteps, self.grid_steps, steps))

    def consistency(self, out: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        """f(x, t): the clean chunk, x0 clipped as the teacher's DDIM clips it."""
        alpha = self.alphas_cumprod[t].to(x.dtype)
        x0 = predicted_x0(out, x, alpha, self.prediction_type)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        c_skip, c_out = boundary_scalings(torch.as_tensor(t))
        return float(c_skip) * x + float(c_out) * x0

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor | int, sample: torch.Tensor,
             generator: torch.Generator | None = None) -> SimpleNamespace:
        t = int(timestep)
        clean = self.consistency(model_output, t, sample)
        i = int((self.timesteps == t).nonzero()[0])
        if i == len(self.timesteps) - 1:
            return SimpleNamespace(prev_sample=clean)
        alpha = self.alphas_cumprod[int(self.timesteps[i + 1])].to(sample.dtype)
        noise = draw_noise(tuple(sample.shape), generator, sample.device)
        return SimpleNamespace(prev_sample=alpha.sqrt() * clean + (1 - alpha).sqrt() * noise)
