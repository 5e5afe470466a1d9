"""`robodiff collect task=T teleop=expert|keyboard|... episodes=N out=PATH [robot=R] [seed=S] [--json]`."""

from __future__ import annotations

from dataclasses import dataclass

from robodiff.config import compose, require, validate
from robodiff.errors import UserError

HELP = """
usage: robodiff collect task=T teleop=expert|keyboard|spacemouse|gamepad|leader episodes=N out=PATH
                        [robot=R] [seed=S] [keep_failed=true|false] [max_attempts=M] [--json]

Records N episodes into the Zarr episode store PATH (created, or appended to when its features
match): observations, the action the robot really executed (after clamping) and timestamps.
teleop=expert: the task's scripted expert, attempt i seeded with S+i; failed attempts are dropped
unless keep_failed=true. teleop=keyboard: arrows/WASD move the target in the terminal (works over
ssh); Enter/Space ends an episode, x discards it, q stops. Ctrl-C loses only the episode in progress.
--json: last stdout line {"out", "episodes", "frames", "success_rate", "attempts", ...}
"""


@dataclass
class CollectConfig:
    task: str | None = None
    teleop: str = "expert"
    robot: str | None = None
    episodes: int = 10
    out: str | None = None
    seed: int = 0
    keep_failed: bool | None = None
    max_attempts: int | None = None


def run(args: list[str], overrides: list[str], flags: set[str]) -> dict:
    from robodiff.sim.collect import collect

    if args:
        raise UserError(f"unexpected argument '{args[0]}' (collect takes key=value overrides only)")
    cfg = validate(compose("collect", overrides), CollectConfig)
    result = collect(require(cfg, "task", "collect"), teleop=cfg.teleop, episodes=cfg.episodes,
                     out=require(cfg, "out", "collect"), seed=cfg.seed, robot=cfg.robot,
                     keep_failed=cfg.keep_failed, max_attempts=cfg.max_attempts)
    print(f"{result['out']}: kept {result['episodes']} episodes ({result['frames']} frames) of "
          f"{result['attempts']} attempts, success rate {result['success_rate']:.2f}; the store now "
          f"holds {result['store_episodes']} episodes")
    if result["interrupted"]:
        result["_exit_code"] = 130
    return result
