"""`robodiff train task=T dataset=PATH [policy=P] [key=value ...] [--json]`."""

from __future__ import annotations

from typing import Any

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


def run(args: list[str], overrides: list[str], flags: set[str]) -> dict[str, Any]:
    from robodiff.errors import UserError
    from robodiff.train.config import load
    from robodiff.train.trainer import train

    if args:
        raise UserError(f"unexpected argument '{args[0]}' (train takes key=value overrides only)")
    return train(load(overrides))
