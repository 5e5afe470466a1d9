"""Exponential moving average of a model's weights, with Diffusion Policy's warm-up schedule.

decay(step) = clamp(1 - (1 + step / inv_gamma) ** -power, min_value, max_value): small early, so
the average forgets the random initialisation quickly, and approaching max_value later.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMAModel:
    def __init__(self, model: nn.Module, power: float = 0.75, max_value: float = 0.9999, min_value: float = 0.0,
                 update_after_step: int = 0, inv_gamma: float = 1.0):
        self.averaged_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.max_value, self.min_value = power, max_value, min_value
        self.update_after_step, self.inv_gamma = update_after_step, inv_gamma
        self.optimization_step = 0
        self.decay = 0.0

    def get_decay(self, optimization_step: int) -> float:
        step = max(0, optimization_step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return max(self.min_value, min(value, self.max_value))

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        self.decay = self.get_decay(self.optimization_step)
        source = model.module if hasattr(model, "module") else model  # unwrap DDP
        ema_params = dict(self.averaged_model.named_parameters())
        for name, param in source.named_parameters():
            target = ema_params[name]
            if param.requires_grad:
                target.lerp_(param.detach().to(target.dtype), 1.0 - self.decay)
            else:
                target.copy_(param.detach())
        ema_buffers = dict(self.averaged_model.named_buffers())
        for name, buf in source.named_buffers():
            ema_buffers[name].copy_(buf)
        self.optimization_step += 1

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.averaged_model.state_dict(), "optimization_step": self.optimization_step,
                "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged_model.load_state_dict(state["model"])
        self.optimization_step = int(state.get("optimization_step", 0))
        self.decay = float(state.get("decay", 0.0))
