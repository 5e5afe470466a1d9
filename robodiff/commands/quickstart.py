"""`robodiff quickstart [out=DIR] [seed=S] [key=value ...] [--json]`."""

from __future__ import annotations

from robodiff.errors import UserError
from robodiff.quickstart import QuickstartConfig, quickstart_config, run_quickstart

HELP = """
usage: robodiff quickstart [out=DIR] [seed=S] [key=value ...] [--json]

Collects expert demonstrations of push_block with camera images, trains a diffusion policy whose
observations include the image (a CPU-friendly config), evaluates it over 50 seeded episodes in
simulation and writes DIR/report.md (success rate, loss curve, success-by-episode plot, rollout
videos). Stages completed with the same settings are reused on a rerun.

keys (robodiff/conf/quickstart.yaml): out seed task demos train_steps batch_size policy
  lr lr_warmup_steps encoder down_dims diffusion_step_embed_dim
  n_obs_steps n_action_steps device eval.episodes eval.seed eval.n_envs eval.n_videos
  noise.scale noise.correlation noise.keep_failed (demonstrations that teach recovery)
  select.every_steps select.episodes select.seed select.n_envs (training rollouts: the
  success curve in report.md and the checkpoint chosen by it)
--json: last stdout line {"success_rate", "demos", "train_seconds", "eval_episodes", ...}
"""


SCHEMA = QuickstartConfig
load_config = quickstart_config


def run(args: list[str], overrides: list[str], flags: set[str]) -> dict:
    if args:
        raise UserError(f"unexpected argument '{args[0]}' (quickstart takes key=value overrides only)")
    result = run_quickstart(quickstart_config(overrides))
    print(f"success rate {result['success_rate']:.2f} over {result['eval_episodes']} episodes "
          f"({result['demos']} demos, {result['train_seconds']:.0f} s of training)")
    print(f"report: {result['report']}")
    return result
