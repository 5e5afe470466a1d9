"""Consistency distillation (`robodiff distill`): a student that samples in 1-4 steps what its DDIM
teacher samples in many (Song et al. 2023; the discrete-time form of Latent Consistency Models).

Per training window: a grid index n and noise give the window's actions noised to the grid's
timestep t_n; the frozen teacher takes one DDIM step from there to the grid timestep below,
t_{n-1} (below t_0, the clean end); the target network, an EMA of the student (frozen), maps that
point to its clean estimate f_target(x, t_{n-1}), which at the clean end is the point itself (the
boundary condition of `consistency.boundary_scalings`); and the student is trained to give the
same from the noisier point, f_student(x_{t_n}, t_n). Chained down the grid, the student maps any
point of a teacher trajectory to where the teacher's DDIM takes it, in one network evaluation.

The three networks see the same observation: images are cropped once per window, before the
encoders (the student's random crop would otherwise differ from the teacher's centre crop).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robodiff.errors import ConfigError
from robodiff.models.ema import EMAModel
from robodiff.models.obs_encoder import random_crop
from robodiff.policy.consistency import boundary_scalings, ddim_grid, predicted_eps, predicted_x0
from robodiff.policy.diffusion import DiffusionPolicy

METHODS = ("consistency",)
TEACHERS = ("diffusion_unet", "diffusion_transformer")


def student_config(teacher_cfg: dict[str, Any], teacher: str, teacher_step: int, method: str,
                   grid_steps: int | None, target_decay: float, sampling_steps: int) -> dict[str, Any]:
    """The policy config of a student of `teacher_cfg`: the same network, sampled by consistency
    in `sampling_steps` steps, distilled on the teacher's DDIM grid of `grid_steps` (None: the
    teacher's own DDIM steps)."""
    if method not in METHODS:
        raise ConfigError(f"method '{method}' is not one of {', '.join(METHODS)}")
    name = teacher_cfg.get("name")
    if name not in TEACHERS:
        raise ConfigError(f"checkpoint {teacher} is a '{name}' policy: distillation needs a diffusion policy "
                          f"({', '.join(TEACHERS)})")
    if teacher_cfg.get("distillation"):
        raise ConfigError(f"checkpoint {teacher} is already a student (of {teacher_cfg['distillation']['teacher']}): "
                          f"distil its teacher instead")
    schedule = teacher_cfg["noise_scheduler"]
    grid = int(schedule["num_inference_steps"] if grid_steps is None else grid_steps)
    if not int(sampling_steps) <= grid <= int(schedule["num_train_timesteps"]):
        raise ConfigError(f"distill.grid_steps={grid} must be in sampling_steps={sampling_steps}.."
                          f"{schedule['num_train_timesteps']} (the teacher's num_train_timesteps)")
    cfg = copy.deepcopy(teacher_cfg)
    cfg["noise_scheduler"].update(inference_scheduler="consistency", num_inference_steps=int(sampling_steps))
    cfg["distillation"] = {"method": method, "teacher": str(teacher), "teacher_step": int(teacher_step),
                           "grid_steps": grid, "target_decay": float(target_decay)}
    return cfg


def teacher_of(policy_cfg: dict[str, Any]) -> str | None:
    """The teacher checkpoint a student's config names; None for any other policy."""
    distillation = policy_cfg.get("distillation")
    return str(distillation["teacher"]) if distillation else None


class ConsistencyDistillation(nn.Module):
    """The training loop's objective for a student: `forward(batch)` is the student's loss;
    `loss(model, batch)` the same for another copy (the loop validates the EMA weights);
    `after_step()` moves the target network; `train_state()` / `load_train_state()` carry it
    through a resume. Starts the student as a copy of its teacher."""

    def __init__(self, student: DiffusionPolicy, teacher: DiffusionPolicy):
        super().__init__()
        distillation = student.policy_cfg["distillation"]
        if teacher.state_dict().keys() != student.state_dict().keys():
            raise ConfigError(f"teacher {distillation['teacher']} does not have the student's network")
        student.load_state_dict(teacher.state_dict())
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        decay = float(distillation["target_decay"])
        # A constant decay: EMAModel's warm-up schedule clamped to one value (the first step copies).
        self.target = EMAModel(student, min_value=decay, max_value=decay)
        schedule = student.noise_scheduler
        grid = sorted(ddim_grid(schedule.config.num_train_timesteps, int(distillation["grid_steps"])))
        device = student.device
        self.register_buffer("grid", torch.tensor(grid, device=device), persistent=False)
        # alpha_cumprod of DDPM timestep t is levels[t + 1]; levels[0] = 1 is the clean end (t = -1).
        levels = torch.cat([torch.ones(1), schedule.alphas_cumprod.float()])
        self.register_buffer("levels", levels.to(device), persistent=False)

    def train(self, mode: bool = True) -> ConsistencyDistillation:
        super().train(mode)
        self.teacher.eval()  # no dropout in the teacher's trajectories, whatever the loop sets
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(self.student, batch)

    def loss(self, student: DiffusionPolicy, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = self._same_view(student, batch)
        target = self.target.averaged_model.eval()
        device = student.device
        x0 = student.normalizer.normalize_key(student.action_key, batch[student.action_key].to(device))
        x0 = x0.reshape(x0.shape[0], student.horizon, student.action_dim)
        n = torch.randint(0, len(self.grid), (x0.shape[0],), device=device)
        t = self.grid[n]
        t_below = torch.where(n > 0, self.grid[(n - 1).clamp(min=0)], torch.full_like(t, -1))
        alpha, alpha_below = self._level(t), self._level(t_below)
        x_t = alpha.sqrt() * x0 + (1 - alpha).sqrt() * torch.randn_like(x0)
        prefix = (x0, student.random_prefix_mask(x0.shape[0], device)) if student.prefix_conditioned else None
        with torch.no_grad():
            # One DDIM step of the teacher (eta 0, x0 clipped as its sampler clips it).
            out = self.teacher.denoiser(self.teacher.denoiser_input(x_t, prefix), t, self.teacher.encode_obs(batch))
            x0_teacher = predicted_x0(out, x_t, alpha, student.prediction_type)
            schedule = student.noise_scheduler.config
            if schedule.clip_sample:
                x0_teacher = x0_teacher.clamp(-schedule.clip_sample_range, schedule.clip_sample_range)
            eps = predicted_eps(out, x_t, alpha, student.prediction_type)
            x_below = alpha_below.sqrt() * x0_teacher + (1 - alpha_below).sqrt() * eps
            wanted = self._consistency(target, x_below, t_below, prefix, batch)
        got = self._consistency(student, x_t, t, prefix, batch)
        if prefix is None:
            return F.mse_loss(got, wanted)
        free = 1.0 - prefix[1]  # the prefix is given, not predicted
        return ((got - wanted).pow(2) * free).sum() / (free.sum() * student.action_dim)

    def _level(self, t: torch.Tensor) -> torch.Tensor:
        return self.levels[t + 1][:, None, None]

    def _consistency(self, net: DiffusionPolicy, x: torch.Tensor, t: torch.Tensor,
                     prefix: tuple[torch.Tensor, torch.Tensor] | None, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """f_net(x, t) per sample, x0 unclipped (clipping would stop the gradient of an estimate
        out of range; the sampler clips). At t = -1 it is x itself, whatever the network says."""
        out = net.denoiser(net.denoiser_input(x, prefix), t.clamp(min=0), net.encode_obs(batch))
        c_skip, c_out = (c.float()[:, None, None] for c in boundary_scalings(t))
        return c_skip * x + c_out * predicted_x0(out, x, self._level(t), net.prediction_type)

    @staticmethod
    def _same_view(student: DiffusionPolicy, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with every image randomly cropped to the encoders' crop while training, so
        that each encoder's own crop is the identity (evaluation: their centre crops agree)."""
        crop = student.obs_encoder.crop
        if crop is None or not student.training:
            return batch
        out = dict(batch)
        for key in student.obs_encoder.image_keys:
            images = batch[key]
            flat = random_crop(images.flatten(0, 1).permute(0, 3, 1, 2), *crop).permute(0, 2, 3, 1)
            out[key] = flat.reshape(*images.shape[:2], *flat.shape[1:])
        return out

    def after_step(self) -> None:
        self.target.step(self.student)

    def train_state(self) -> dict[str, Any]:
        return {"target": self.target.averaged_model.state_dict(), "target_step": self.target.optimization_step}

    def load_train_state(self, state: dict[str, Any]) -> None:
        self.target.averaged_model.load_state_dict(state["target"])
        self.target.optimization_step = int(state["target_step"])
