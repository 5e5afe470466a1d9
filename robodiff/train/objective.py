"""What the one training loop minimises: a policy's own loss, or for a student (a policy config
with `distillation`, written by `robodiff distill`) its distillation loss against the teacher.

An objective is an `nn.Module` whose `forward(batch)` is the loss of the policy being trained
(DDP synchronises gradients through `forward`), with `loss(model, batch)` for another copy of it
(validation of the EMA weights), `after_step()` after each optimizer step, and the state it keeps
besides the policy's weights (`train_state()`, `load_train_state()`: saved in train_state.pt).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robodiff.errors import UserError
from robodiff.policy import checkpoint as ckpt_io
from robodiff.policy.distill import ConsistencyDistillation, teacher_of

DISTILLATIONS = {"consistency": ConsistencyDistillation}


class LossModule(nn.Module):
    """A policy's own loss (`compute_loss`)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.policy.compute_loss(batch)

    @staticmethod
    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.compute_loss(batch)

    def after_step(self) -> None:
        """Nothing besides the policy moves."""

    def train_state(self) -> dict[str, Any]:
        return {}

    def load_train_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


def teacher_meta(policy_cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The `policy.json` of the teacher a student's config names (None for any other policy),
    checked to be the checkpoint the student was started from."""
    teacher = teacher_of(policy_cfg)
    if teacher is None:
        return None
    meta = ckpt_io.read_policy_meta(teacher)
    started = int(policy_cfg["distillation"]["teacher_step"])
    if int(meta.get("step", -1)) != started:
        raise UserError(f"teacher checkpoint {teacher} is at step {meta.get('step')} now; this student was "
                        f"started from its step {started}")
    return meta


def objective_for(policy: nn.Module, device: torch.device) -> nn.Module:
    """The objective that trains `policy` (on `device`); a student is first set to its teacher's
    weights (the teacher checked by `teacher_meta` when the run was prepared)."""
    teacher = teacher_of(policy.policy_cfg)
    if teacher is None:
        return LossModule(policy)
    method = policy.policy_cfg["distillation"]["method"]
    return DISTILLATIONS[method](policy, ckpt_io.load_policy(teacher, device=device))
