"""`robodiff collect task=T teleop=expert|keyboard|... episodes=N out=PATH [robot=R] [seed=S] [--json]`.

Each step records the observation, the action the robot really executed (what `send_action`
returned after the safety filter and the robot's own clamp, not what the teleop asked for) and
the timestamp. Steps stream into the store as the episode runs (`EpisodeRecorder`); an episode
counts only once `commit` wrote its record, so Ctrl-C or a kill mid-episode loses that episode and
nothing else.

A simulated task runs on its own simulated robot, reset for each attempt from a seed and scored.
A `kind: physical` task runs on a physical robot (`robot=`, default the task's; its settings
`robot.<key>=`): real time, episodes as long as the person makes them (at most the task's
`max_steps`), nothing scored, the per-step rate limit the robot publishes on.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import MISSING

from robodiff.config import bounded, compose, require, to_dict, validate
from robodiff.control.clock import Clock, SimulatedClock
from robodiff.control.loop import EpisodeLoop
from robodiff.control.safety import SafeRobot, SafetyConfig, SafetyFilter, resolve_limits
from robodiff.control.sources import PerturbedSource, TeleopSource
from robodiff.data.integrity import open_for_append
from robodiff.data.recorder import EpisodeRecorder
from robodiff.errors import UserError
from robodiff.features import check_provided
from robodiff.hal import make_robot, make_teleop
from robodiff.hal.base import Robot
from robodiff.sim.env import TaskRobot, task_robot
from robodiff.sim.outcome import TaskOutcome
from robodiff.sim.tasks import TaskSpec, load_task
from robodiff.progress import progress_bar

HELP = """
usage: robodiff collect task=T teleop=expert|keyboard|spacemouse|gamepad|leader episodes=N out=PATH
                        [robot=R] [robot.<key>=...] [seed=S] [keep_failed=true|false]
                        [max_attempts=M] [--json]

Records N episodes into the Zarr episode store PATH (created, or appended to when its features
match): observations, the action the robot really executed (after clamping) and timestamps.
teleop=expert: the task's scripted expert, attempt i seeded with S+i; failed attempts are dropped
unless keep_failed=true. teleop=keyboard: arrows/WASD move the target in the terminal (works over
ssh), on an arm the tool (w/s a/d r/f i/k j/l, o/c the gripper); teleop=spacemouse|gamepad move an
arm's tool (docs/architecture.md says which axis drives which); teleop=leader: the arm's leader,
moved by hand. Enter/Space ends an episode, x discards it, q stops. Ctrl-C loses only the episode
in progress. A physical task (e.g. task=so101_pick_place_real) runs on the physical robot
(robot=so101 robot.port=/dev/ttyACM0 robot.leader.port=/dev/ttyACM1; docs/deployment.md).
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
    realtime_priority: bool = MISSING
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    robot_settings: Dict[str, Any] = field(default_factory=dict)


def check_robot_features(task: TaskSpec, robot: Robot, robot_name: str) -> None:
    """Every feature the task records exists on the robot (observations and action), same shape
    and units: a one-line error naming the first that does not, before anything moves."""
    theirs = {**robot.observation_features, **robot.action_features}
    for key, want in task.features.items():
        check_provided(key, want, theirs, f"task '{task.name}'", f"robot '{robot_name}'")


def collect(task: TaskSpec, robot: Robot, teleop: str, episodes: int, out: Path, seed: int, keep_failed: bool,
            max_attempts: int, safety: Any, realtime_priority: bool = False, noise_scale: float = 0.0,
            noise_correlation: float = 0.0) -> dict[str, Any]:
    """Record `episodes` kept episodes with `teleop` on the (unconnected) `robot`. A simulated
    task's attempt i is reset with seed + i and dropped when it fails unless `keep_failed`; a
    physical task's episode lasts until the person ends it, at most `max_steps`.
    `realtime_priority`: a loop on the real clock runs under SCHED_FIFO where permitted (its work
    is I/O; the recorder's writing runs on another thread). With `noise_scale` > 0 the commands are
    perturbed (`PerturbedSource`, std = noise_scale x each action dimension's range) and the store
    also keeps the intended action as `expert_action`, its training label."""
    features = dict(task.features)
    label_attrs = {}
    if noise_scale > 0:
        features[LABEL] = features[task.action_key]
        label_attrs = {"action_label": LABEL}
    simulated = isinstance(robot, TaskRobot)
    attempts = kept = successes = frames = 0
    interrupted = False
    store = recorder = None
    timing: dict[str, Any] = {}
    save_s: list[float] = []
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
            # A person needs the task's control rate (as does a physical robot); a script runs
            # as fast as the sim goes.
            realtime = device.human or not simulated
            clock: Any = Clock(1.0 / task.fps) if realtime else SimulatedClock(1.0 / task.fps)
            limits = resolve_limits(robot, safety)
            filt = SafetyFilter(limits, dtype=robot.action_features["action"].dtype)
            loop = EpisodeLoop(SafeRobot(robot, filt, None, None), clock, desc=f"collect {task.name}",
                               realtime=realtime_priority and realtime)
            outcome = TaskOutcome(robot, task.max_steps, task.fps) if simulated else None
            duration_s = None if simulated else task.max_steps / task.fps
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
                    if outcome is not None:
                        outcome.reset(seed + attempts)
                    device.reset(seed + attempts)
                    if noise_scale > 0:
                        source.reset(seed + attempts)
                    stats = loop.run(source, outcome=outcome, duration_s=duration_s, keep=keep)
                    ending = stats["event"] or "done"
                    attempts += 1
                    success = outcome is not None and outcome.success
                    successes += success
                    if ending in ("quit", "discard") or not (success or keep_failed):
                        recorder.discard()
                    else:
                        frames += len(recorder)
                        started = time.perf_counter()
                        recorder.commit()
                        save_s.append(time.perf_counter() - started)
                        kept += 1
                        bar.update(1)
                    timing = {k: v for k, v in stats.items() if k.startswith(("period", "overruns"))}  # run totals
                    if simulated:
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
        if recorder is not None:
            recorder.close()
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
            "attempts": attempts, "success_rate": (successes / attempts if attempts else 0.0) if simulated else None,
            "store_episodes": store_episodes, "store_frames": store_frames,
            "interrupted": interrupted, "save_s_max": round(max(save_s), 4) if save_s else None,
            **(recorder.stats() if recorder is not None else {}), **timing, **({} if simulated else robot.stats())}


SCHEMA = CollectConfig


def load_config(overrides: list[str]) -> Any:
    return validate(compose("collect", overrides, settings_of=("robot",)), CollectConfig)


def collect_with(cfg: Any) -> dict[str, Any]:
    """`robodiff collect` of a composed config: every value resolved here, once."""
    task = load_task(require(cfg, "task", "collect"))
    out = Path(require(cfg, "out", "collect"))
    settings = to_dict(cfg.robot_settings)
    if task.kind == "physical":
        robot_name = str(cfg.robot or task.robot)
        robot = make_robot(robot_name, settings=settings)
        check_robot_features(task, robot, robot_name)
    else:
        if cfg.robot is not None and cfg.robot != task.robot:
            raise UserError(f"robot={cfg.robot}: task '{task.name}' is simulated with robot '{task.robot}'; "
                            f"a physical robot records a `kind: physical` task (e.g. so101_pick_place_real)")
        if settings:
            raise UserError(f"robot.{next(iter(settings))}=: task '{task.name}' runs in simulation, where "
                            f"the robot has no settings")
        robot = task_robot(task, render=True)
        if not isinstance(robot, TaskRobot):
            raise UserError(f"task '{task.name}' is a {task.kind} task: collect records MuJoCo or physical tasks")
    keep_failed = (cfg.teleop != "expert") if cfg.keep_failed is None else bool(cfg.keep_failed)
    max_attempts = int(cfg.max_attempts or (2 * cfg.episodes + 10))
    return collect(task, robot, cfg.teleop, cfg.episodes, out, cfg.seed, keep_failed, max_attempts, cfg.safety,
                   bool(cfg.realtime_priority), noise_scale=float(cfg.noise.scale),
                   noise_correlation=float(cfg.noise.correlation))


def run(args: list[str], overrides: list[str], flags: set[str]) -> dict:
    if args:
        raise UserError(f"unexpected argument '{args[0]}' (collect takes key=value overrides only)")
    result = collect_with(load_config(overrides))
    rate = "" if result["success_rate"] is None else f", success rate {result['success_rate']:.2f}"
    print(f"{result['out']}: kept {result['episodes']} episodes ({result['frames']} frames) of "
          f"{result['attempts']} attempts{rate}; the store now holds {result['store_episodes']} episodes")
    if result["interrupted"]:
        result["_exit_code"] = 130
    return result
