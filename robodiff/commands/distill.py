"""`robodiff distill checkpoint=RUN [method=consistency] [key=value ...] [--json]`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from robodiff.commands.train import reported, train_with
from robodiff.config import bounded, compose, require, validate
from robodiff.errors import ConfigError, UserError
from robodiff.policy.checkpoint import pinned_checkpoint, read_policy_meta
from robodiff.policy.distill import student_config
from robodiff.train.config import (DistributedConfig, EvalConfig, LoggingConfig, TrainingConfig, check, given_keys,
                                   resumed)
from robodiff.train.trainer import SUMMARY_FILE

HELP = """
usage: robodiff distill checkpoint=RUN [method=consistency] [key=value ...] [--json]

Trains a student of a diffusion policy that samples in 1-4 denoising steps instead of the
teacher's DDIM steps (consistency distillation: the student, starting as the teacher, learns to
map any point of the teacher's DDIM trajectories to their end in one step). It trains through the
same loop as `robodiff train` (run dir, checkpoints, resume, Ctrl-C, torchrun) and its checkpoint
loads wherever a policy does: eval, deploy, bench latency.

  checkpoint=RUN            the teacher (run dir or checkpoint dir), frozen
  dataset=PATH              default: the store the teacher was trained on
  distill.sampling_steps=1  the student's steps at inference (eval/deploy/bench sampling_steps= too)
  distill.grid_steps=5      the teacher's DDIM grid it learns along (null: the teacher's DDIM steps)
  distill.target_decay=0.95 EMA of the target network
  training.steps=1000 ...   the loop's keys as in `robodiff train`; all keys: conf/distill.yaml
  run_dir=runs/NAME resume=true   continue a distillation (its teacher and distill.* as recorded)

Many processes: torchrun --nproc_per_node=N -m robodiff.cli distill checkpoint=RUN ...
--json: the training summary, with "teacher", "teacher_step" and "step_fraction" (student steps /
teacher steps; "seconds_fraction" too when the teacher's run dir has its summary.json).
"""


@dataclass
class DistillSettings:
    sampling_steps: int = bounded(ge=1, le=4)
    grid_steps: Optional[int] = bounded(ge=1)
    target_decay: float = bounded(ge=0, lt=1)


@dataclass
class DistillConfig:
    checkpoint: Optional[str] = MISSING
    method: str = MISSING
    dataset: Optional[str] = MISSING
    task: Optional[str] = MISSING
    run_dir: Optional[str] = MISSING
    resume: bool = MISSING
    device: str = MISSING
    distill: DistillSettings = field(default_factory=DistillSettings)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


SCHEMA = DistillConfig
# What a resumed distillation keeps as its student's config records it (policy.distillation).
FIXED_ON_RESUME = ("checkpoint", "method", "distill")
# The keys the training loop reads as they are given here.
LOOP_KEYS = ("task", "run_dir", "resume", "device", "training", "eval", "logging", "distributed")


def load_config(overrides: list[str]) -> Any:
    return validate(compose("distill", overrides), DistillConfig)


def trainer_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The training loop's config (conf/train.yaml's shape) for this distillation: the student's
    policy config from the teacher's, resolved here once; on resume, the run's own."""
    loop = {key: cfg[key] for key in LOOP_KEYS}
    if cfg.resume:
        fixed = [key for key in given_keys(overrides) if key.split(".")[0] in FIXED_ON_RESUME]
        if fixed:
            raise ConfigError(f"config key '{fixed[0]}': a resumed distillation keeps its teacher and distill.* "
                              f"settings (policy.distillation in {cfg.run_dir}/config.yaml)")
        return resumed(OmegaConf.create({**loop, "dataset": cfg.dataset, "policy": {}}), overrides)
    teacher = pinned_checkpoint(require(cfg, "checkpoint", "distill"))
    meta = read_policy_meta(teacher)
    policy = student_config(meta["policy"], str(teacher), int(meta["step"]), cfg.method, cfg.distill.grid_steps,
                            cfg.distill.target_decay, cfg.distill.sampling_steps)
    dataset = cfg.dataset if cfg.dataset is not None else meta.get("dataset")
    if dataset is None:
        raise ConfigError(f"checkpoint {teacher} records no dataset: give dataset=PATH")
    return check(OmegaConf.create({**loop, "dataset": dataset, "policy": policy}))


def training_cost(summary: dict[str, Any], teacher: str, teacher_step: int) -> dict[str, Any]:
    """The distillation's training against the teacher's: steps, and seconds when the teacher's
    run dir (two levels above its checkpoint dir) kept its summary."""
    cost: dict[str, Any] = {"teacher": teacher, "teacher_step": teacher_step,
                            "step_fraction": round(summary["steps"] / max(teacher_step, 1), 4)}
    teacher_summary = Path(teacher).parents[1] / SUMMARY_FILE
    if teacher_summary.is_file():
        seconds = json.loads(teacher_summary.read_text()).get("train_seconds")
        if seconds:
            cost["seconds_fraction"] = round(summary["train_seconds"] / seconds, 4)
    return cost


def run(args: list[str], overrides: list[str], flags: set[str]) -> dict[str, Any]:
    if args:
        raise UserError(f"unexpected argument '{args[0]}' (distill takes key=value overrides only)")
    cfg = trainer_config(load_config(overrides), overrides)
    summary = train_with(cfg)
    distillation = cfg.policy.distillation
    summary.update(training_cost(summary, str(distillation.teacher), int(distillation.teacher_step)))
    return reported(summary, "distill")
