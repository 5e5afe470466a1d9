"""`robodiff collect task=T teleop=expert|keyboard|... episodes=N out=PATH [robot=R] [seed=S] [--json]`.

Each step records the observation, the action the robot really executed (what `send_action`
returned after the safety filter and the robot's own clamp, not what the teleop asked for) and
the timestamp. An episode reaches the store only through `EpisodeRecorder.commit`, so Ctrl-C or a
kill mid-episode loses that episode and nothing else.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from robodiff.config import bounded, compose, require, validate
from robodiff.control.clock import Clock, SimulatedClock
from robodiff.control.loop import EpisodeLoop
from robodiff.control.safety import SafeRobot, SafetyConfig, SafetyFilter, resolve_limits
from robodiff.control.sources import PerturbedSource, TeleopSource
from robodiff.data.integrity import open_for_append
from robodiff.data.store import EpisodeRecorder, EpisodeStore
from robodiff.errors import UserError
from robodiff.hal import make_teleop
from robodiff.sim.env import TaskRobot, task_robot
from robodiff.sim.outcome import TaskOutcome
from robodiff.sim.tasks import TaskSpec, load_task
from robodiff.progress import progress_bar

HELP = """
usage: robodiff collect task=T teleop=expert|keyboard|spacemouse|gamepad|leader episodes=N out=PATH
                        [robot=R] [seed=S] [keep_failed=true|false] [max_attempts=M] [--json]

Records N episodes into the Zarr episode store PATH (created, or appended to when its features
match): observations, the action the robot really executed (after clamping) and timestamps.
teleop=expert: the task's scripted expert, attempt i seeded with S+i; failed attempts are dropped
unless keep_failed=true. teleop=keyboard: arrows/WASD move the target in the terminal (works over
ssh), on an arm the tool (w/s a/d r/f i/k j/l, o/c the gripper); teleop=spacemouse|gamepad move an
arm's tool (docs/architecture.md says which axis drives which). Enter/Space ends an episode, x
discards it, q stops. Ctrl-C loses only the episode in progress.
--json: last stdout line {"out", "episodes", "frames", "success_rate", "attempts", ...}
Keys: robodiff/conf/collect.yaml.
"""


# The intended action of a perturbed demonstration, stored beside the action really sent.
LABEL = "expert_action"


@dataclass
class NoiseConfig:
    scale: float = bounded(ge=0, le=1)
    correlation: float = bounded(ge=0, lt=1)


@dataclass
class CollectConfig:
    task: Optional[str] = MISSING
    teleop: str = MISSING
    robot: Optional[str] = MISSING
    episodes: int = bounded(ge=1)
    out: Optional[str] = MISSING
    seed: int = bounded(ge=0)
    keep_failed: Optional[bool] = MISSING
    max_attempts: Optional[int] = bounded(ge=1)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)


def collect(task: TaskSpec, teleop: str, episodes: int, out: Path, seed: int, keep_failed: bool,
            max_attempts: int, safety: Any, noise_scale: float = 0.0, noise_correlation: float = 0.0) -> dict[str, Any]:
    """Record `episodes` kept episodes with `teleop`; attempt i is reset with seed + i, and a failed
    attempt is dropped unless `keep_failed`. With `noise_scale` > 0 the commands are perturbed
    (`PerturbedSource`, std = noise_scale x each action dimension's range) and the store also keeps
    the intended action as `expert_action`, its training label."""
    features = dict(task.features)
    label_attrs = {}
    if noise_scale > 0:
        features[LABEL] = features[task.action_key]
        label_attrs = {"action_label": LABEL}
    robot = task_robot(task, render=True)
    if not isinstance(robot, TaskRobot):
        raise UserError(f"task '{task.name}' is a {task.kind} task: collect records MuJoCo tasks")
    attempts = kept = successes = frames = 0
    interrupted = False
    store: EpisodeStore | None = None
    try:
        robot.connect()
        # Connect the device before touching the store: a missing terminal or device leaves no
        # empty store behind.
        with make_teleop(teleop, robot) as device:
            created = not out.exists()
            store = open_for_append(out, features, fps=float(task.fps), task=task.name, robot=task.robot,
                                    extra_attrs=label_attrs, who=f"task '{task.name}' ({task.path})")
            before = store.n_episodes
            recorder = EpisodeRecorder(store)
            # A person needs the task's control rate; a script runs as fast as the sim goes.
            human = device.human
            clock: Any = Clock(1.0 / task.fps) if human else SimulatedClock(1.0 / task.fps)
            limits = resolve_limits(robot, safety)
            filt = SafetyFilter(limits, dtype=robot.action_features["action"].dtype)
            loop = EpisodeLoop(SafeRobot(robot, filt, None, None), clock, desc=f"collect {task.name}")
            outcome = TaskOutcome(robot, task.max_steps, task.fps)
            source: Any = TeleopSource(device, "action")
            if noise_scale > 0:
                source = PerturbedSource(source, noise_scale * (limits.high - limits.low), noise_correlation)

            def keep(row: dict[str, Any]) -> None:
                step = {k: row[k] for k in task.features}
                if noise_scale > 0:
                    step[LABEL] = source.intended
                recorder.add(step)

            if device.help:
                print(device.help, file=sys.stderr)
            bar = progress_bar(total=episodes, desc=f"collect {task.name} ({teleop})", unit="ep")
            try:
                while kept < episodes and attempts < max_attempts:
                    outcome.reset(seed + attempts)
                    device.reset(seed + attempts)
                    if noise_scale > 0:
                        source.reset(seed + attempts)
                    stats = loop.run(source, outcome=outcome, keep=keep)
                    ending = stats["event"] or "done"
                    attempts += 1
                    successes += outcome.success
                    if ending in ("quit", "discard") or not (outcome.success or keep_failed):
                        recorder.discard()
                    else:
                        frames += len(recorder)
                        recorder.commit()
                        kept += 1
                        bar.update(1)
                    bar.set_postfix(attempts=attempts, success=f"{successes / attempts:.2f}")
                    if ending == "quit":
                        break
            except KeyboardInterrupt:
                recorder.discard()
                interrupted = True
                # A Ctrl-C during a commit waits for it: count what the store holds, not what ran.
                kept = store.n_episodes - before
                print(f"\ninterrupted: the episode in progress was dropped, {kept} kept", file=sys.stderr)
            finally:
                bar.close()
    finally:
        robot.close()
        if store is not None:
            store_episodes, store_frames = store.n_episodes, store.n_frames
            store.close()
            if created and store_episodes == 0:
                shutil.rmtree(out, ignore_errors=True)  # nothing recorded: leave no empty store behind
    if kept < episodes and not interrupted and teleop == "expert":
        print(f"warning: only {kept} of {episodes} episodes succeeded in {attempts} attempts", file=sys.stderr)
    if kept == 0 and not interrupted:
        raise UserError(f"no episode was kept ({attempts} attempts, none {'succeeded' if not keep_failed else 'ended'}"
                        f"); {out} was not {'created' if created else 'changed'}")
    return {"out": str(out), "task": task.name, "teleop": teleop, "episodes": kept, "frames": frames,
            "attempts": attempts, "success_rate": successes / attempts if attempts else 0.0,
            "store_episodes": store_episodes, "store_frames": store_frames,
            "interrupted": interrupted}


SCHEMA = CollectConfig


def load_config(overrides: list[str]) -> Any:
    return validate(compose("collect", overrides), CollectConfig)


def collect_with(cfg: Any) -> dict[str, Any]:
    """`robodiff collect` of a composed config: every value resolved here, once."""
    task = load_task(require(cfg, "task", "collect"))
    out = Path(require(cfg, "out", "collect"))
    if cfg.robot is not None and cfg.robot != task.robot:
        raise UserError(f"robot={cfg.robot}: task '{task.name}' is simulated with robot '{task.robot}'; "
                        f"recording on other robots comes with `robodiff deploy record=...`")
    keep_failed = (cfg.teleop != "expert") if cfg.keep_failed is None else bool(cfg.keep_failed)
    max_attempts = int(cfg.max_attempts or (2 * cfg.episodes + 10))
    return collect(task, cfg.teleop, cfg.episodes, out, cfg.seed, keep_failed, max_attempts, cfg.safety,
                   noise_scale=float(cfg.noise.scale), noise_correlation=float(cfg.noise.correlation))


def run(args: list[str], overrides: list[str], flags: set[str]) -> dict:
    if args:
        raise UserError(f"unexpected argument '{args[0]}' (collect takes key=value overrides only)")
    result = collect_with(load_config(overrides))
    print(f"{result['out']}: kept {result['episodes']} episodes ({result['frames']} frames) of "
          f"{result['attempts']} attempts, success rate {result['success_rate']:.2f}; the store now "
          f"holds {result['store_episodes']} episodes")
    if result["interrupted"]:
        result["_exit_code"] = 130
    return result
