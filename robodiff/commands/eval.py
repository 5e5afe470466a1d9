"""`robodiff eval task=T (checkpoint=PATH | policy=expert|random) episodes=N [seed=S] [n_envs=K]
[executor=E latency_s=L] [--json]`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from robodiff.config import bounded, compose, require, split_policy_override, validate
from robodiff.control.safety import SafetyConfig
from robodiff.errors import UserError
from robodiff.eval import evaluate
from robodiff.policy.checkpoint import read_chunk_spec
from robodiff.train.distributed import pick_device

HELP = """
usage: robodiff eval task=T (checkpoint=RUN_OR_CKPT | policy=expert|random) episodes=N
                     [seed=S] [n_envs=K] [out=DIR] [n_videos=3] [video_size=256] [device=cpu]
                     [n_action_steps=K] [sampling_steps=S] [executor=sync|async|rtc|ensemble [latency_s=L]]
                     [safety.rate_limit=true] [--json]

Runs N simulated episodes (episode i reset with seed S+i), in K parallel processes when n_envs>1
(same results as n_envs=1). Writes DIR/episodes.jsonl (seed, success, score, length per episode),
DIR/summary.json, DIR/eval.png (score by episode, score histogram) and mp4 videos of the first
n_videos episodes. Prints the success rate with its 95 % Wilson interval and the mean score.
sampling_steps=S samples a diffusion checkpoint with S denoising steps (DDIM steps of a teacher,
consistency steps of a `robodiff distill` student; default: the checkpoint's).
executor=E runs the policy through deploy's executor E on the episode's clock, every inference
taking L seconds of it: the success a slower computer would get, repeatable to the episode.
Actions pass deploy's safety filter (limits, NaN rejection); safety.rate_limit=true adds its
per-step rate limit, off here by default. Keys: robodiff/conf/eval.yaml.
--json: last stdout line {"success_rate", "mean_score", "episodes", "ci95", "out", "videos", ...}
"""


@dataclass
class EvalConfig:
    task: Optional[str] = MISSING
    checkpoint: Optional[str] = MISSING
    policy: Optional[str] = MISSING
    n_action_steps: Optional[int] = bounded(ge=1)
    sampling_steps: Optional[int] = bounded(ge=1)
    episodes: int = bounded(ge=1)
    seed: int = bounded(ge=0)
    n_envs: int = bounded(ge=1)
    out: Optional[str] = MISSING
    n_videos: int = bounded(ge=0)
    video_size: int = bounded(ge=16)
    device: str = MISSING
    executor: Optional[str] = MISSING
    latency_s: float = bounded(ge=0)
    safety: SafetyConfig = field(default_factory=SafetyConfig)


def n_action_steps_for(checkpoint: str, override: int | None) -> int:
    """The run's n_action_steps: `n_action_steps=` when given, else the checkpoint's."""
    return int(read_chunk_spec(checkpoint).n_action_steps if override is None else override)


SCHEMA = EvalConfig


def load_config(overrides: list[str]) -> Any:
    rest, policy = split_policy_override(overrides)
    cfg = validate(compose("eval", rest), EvalConfig)
    if policy is not None:
        cfg.policy = policy
    return cfg


def evaluate_with(cfg: Any) -> dict[str, Any]:
    """`robodiff eval` of a composed config: every value resolved here, once."""
    task = require(cfg, "task", "eval")
    if cfg.checkpoint is None and cfg.policy is None:
        raise UserError("give checkpoint=RUN_OR_CKPT or policy=expert|random")
    n_action_steps = None
    if cfg.checkpoint is not None and Path(cfg.checkpoint).exists():
        n_action_steps = n_action_steps_for(cfg.checkpoint, cfg.n_action_steps)
    elif cfg.policy is not None:
        for key in ("n_action_steps", "sampling_steps"):
            if cfg[key] is not None:
                raise UserError(f"{key}= is for a learned policy (checkpoint=PATH), not policy={cfg.policy}")
    device = str(pick_device(cfg.device))  # a device this machine lacks is one line, before anything runs
    return evaluate(task, cfg.safety, checkpoint=cfg.checkpoint, policy_name=cfg.policy,
                      n_action_steps=n_action_steps, sampling_steps=cfg.sampling_steps, episodes=cfg.episodes, seed=cfg.seed,
                      n_envs=cfg.n_envs, out=cfg.out, n_videos=cfg.n_videos, device=device,
                      video_size=cfg.video_size, executor=cfg.executor, latency_s=cfg.latency_s)


def run(args: list[str], overrides: list[str], flags: set[str]) -> dict:
    if args:
        raise UserError(f"unexpected argument '{args[0]}' (eval takes key=value overrides only)")
    result = evaluate_with(load_config(overrides))
    lo, hi = result["ci95"]
    print(f"{result['task']} / {result['policy']}: success {result['success_rate']:.3f} "
          f"(95 % CI {lo:.3f}-{hi:.3f}) over {result['episodes']} episodes, "
          f"mean score {result['mean_score']:.3f}")
    print(f"results: {result['out']}")
    return result
