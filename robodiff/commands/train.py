"""`robodiff train task=T dataset=PATH [policy=P] [key=value ...] [--json]`."""

from __future__ import annotations

import os
import sys
from typing import Any

from omegaconf import DictConfig

from robodiff.config import compose
from robodiff.errors import UserError
from robodiff.eval import evaluate
from robodiff.sim.tasks import load_task
from robodiff.train.config import TrainConfig, load
from robodiff.train.trainer import Rollout, saved_task, train

HELP = """
usage: robodiff train task=T dataset=PATH [policy=diffusion_unet|diffusion_transformer|regression]
                      [key=value ...] [--json]

Train a policy on an episode store (or anything `robodiff dataset import` reads; it is imported
once to <PATH>.robodiff.zarr). The task's observation keys pick the dataset features.

  run_dir=runs/NAME        where config.yaml, metrics.jsonl, loss.png, TensorBoard events and
                           checkpoints/<step>/ + checkpoints/latest/ go (default runs/<task>-<time>)
  resume=true              continue run_dir from its latest checkpoint (exact: same batches, RNG)
  device=auto|cpu|cuda     training.steps=N  training.batch_size=B  training.seed=S
  policy.horizon=16 ...    any key of robodiff/conf/policy/<policy>.yaml; all keys: conf/train.yaml
  eval.every_steps=K       simulated rollouts of the EMA policy every K steps

Many GPUs / nodes: torchrun --nproc_per_node=N -m robodiff.cli train ...   (see docs/training.md)
"""


def rollout_for(task: str, eval_cfg: DictConfig) -> Rollout:
    """Training's simulated rollouts: `robodiff eval` of the policy being trained, with eval's
    safety defaults (conf/eval.yaml)."""
    safety = compose("eval", []).safety

    def rollout(policy: Any, out: str, device: str) -> dict[str, Any]:
        return evaluate(task, safety, policy=policy, n_action_steps=int(policy.n_action_steps),
                        episodes=int(eval_cfg.episodes), seed=int(eval_cfg.seed), n_envs=int(eval_cfg.n_envs),
                        out=out, device=device, n_videos=1)
    return rollout


def train_with(cfg: DictConfig) -> dict[str, Any]:
    """`robodiff train` of a composed config: the task (and so its observations and rollouts)
    resolved here, once."""
    task = saved_task(cfg)
    if task is None:
        return train(cfg)
    spec = load_task(task)
    rollout = None if spec.kind == "physical" else rollout_for(task, cfg.eval)  # no simulator to roll out in
    return train(cfg, spec.name, list(spec.policy_inputs), rollout)


SCHEMA = TrainConfig
load_config = load


def reported(summary: dict[str, Any], command: str) -> dict[str, Any]:
    """The summary of a training run of `robodiff <command>`; an interrupted one exits 130 and
    says how to continue it."""
    if summary.get("interrupted"):
        if os.environ.get("RANK", "0") == "0":  # one hint under torchrun
            print(f"interrupted at step {summary['steps']}: checkpoint {summary['checkpoint']}; continue with "
                  f"`robodiff {command} run_dir={summary['run_dir']} resume=true`", file=sys.stderr)
        summary["_exit_code"] = 130
    return summary


def run(args: list[str], overrides: list[str], flags: set[str]) -> dict[str, Any]:
    if args:
        raise UserError(f"unexpected argument '{args[0]}' (train takes key=value overrides only)")
    return reported(train_with(load(overrides)), "train")
