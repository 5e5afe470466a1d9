"""`robodiff eval task=T (checkpoint=PATH | policy=expert|random) episodes=N [seed=S] [n_envs=K]
[executor=E latency_s=L] [--json]`."""

from __future__ import annotations

from dataclasses import dataclass

from robodiff.config import compose, require, validate
from robodiff.errors import UserError

HELP = """
usage: robodiff eval task=T (checkpoint=RUN_OR_CKPT | policy=expert|random) episodes=N
                     [seed=S] [n_envs=K] [out=DIR] [n_videos=3] [video_size=256] [device=cpu]
                     [executor=sync|async|rtc|ensemble [latency_s=L]] [--json]

Runs N simulated episodes (episode i reset with seed S+i), in K parallel processes when n_envs>1
(same results as n_envs=1). Writes DIR/episodes.jsonl (seed, success, score, length per episode),
DIR/summary.json, DIR/eval.png (score by episode, score histogram) and mp4 videos of the first
n_videos episodes. Prints the success rate with its 95 % Wilson interval and the mean score.
executor=E runs the policy through deploy's executor E on the episode's clock, every inference
taking L seconds of it: the success a slower computer would get, repeatable to the episode.
--json: last stdout line {"success_rate", "mean_score", "episodes", "ci95", "out", "videos", ...}
"""


@dataclass
class EvalConfig:
    task: str | None = None
    checkpoint: str | None = None
    policy: str | None = None
    episodes: int = 50
    seed: int = 0
    n_envs: int = 1
    out: str | None = None
    n_videos: int = 3
    video_size: int = 256
    device: str = "cpu"
    executor: str | None = None
    latency_s: float = 0.0


def split_policy_override(overrides: list[str]) -> tuple[list[str], str | None]:
    """`policy=` is a plain key here, but conf/policy/ makes Hydra read it as a config group."""
    rest, policy = [], None
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "policy":
            policy = value or None
        else:
            rest.append(item)
    return rest, policy


def run(args: list[str], overrides: list[str], flags: set[str]) -> dict:
    from robodiff.sim.evaluate import evaluate

    if args:
        raise UserError(f"unexpected argument '{args[0]}' (eval takes key=value overrides only)")
    rest, policy = split_policy_override(overrides)
    cfg = validate(compose("eval", rest), EvalConfig)
    if policy is not None:
        cfg.policy = policy
    task = require(cfg, "task", "eval")
    if cfg.checkpoint is None and cfg.policy is None:
        raise UserError("give checkpoint=RUN_OR_CKPT or policy=expert|random")
    result = evaluate(task, checkpoint=cfg.checkpoint, policy_name=cfg.policy, episodes=cfg.episodes,
                      seed=cfg.seed, n_envs=cfg.n_envs, out=cfg.out, n_videos=cfg.n_videos,
                      device=cfg.device, video_size=cfg.video_size, executor=cfg.executor,
                      latency_s=cfg.latency_s)
    lo, hi = result["ci95"]
    print(f"{result['task']} / {result['policy']}: success {result['success_rate']:.3f} "
          f"(95 % CI {lo:.3f}-{hi:.3f}) over {result['episodes']} episodes, "
          f"mean score {result['mean_score']:.3f}")
    print(f"results: {result['out']}")
    return result
