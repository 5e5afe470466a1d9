"""`robodiff deploy checkpoint=PATH robot=R [executor=async] [duration_s=S] [record=PATH] [--json]`."""

from __future__ import annotations

import functools
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from omegaconf import MISSING

from robodiff.config import bounded, compose, require, to_dict, validate
from robodiff.control.clock import Clock
from robodiff.control.executors import check_executor, check_n_action_steps, make_executor
from robodiff.control.loop import EpisodeLoop
from robodiff.control.safety import EStop, SafeRobot, SafetyConfig, SafetyFilter, resolve_limits
from robodiff.data.integrity import open_for_append
from robodiff.data.recorder import EpisodeRecorder
from robodiff.errors import ConfigError, UserError
from robodiff.features import Feature, Features, check_provided, check_units
from robodiff.hal import make_robot
from robodiff.hal.registry import ROBOTS
from robodiff.hal.base import Robot
from robodiff.policy.checkpoint import load_policy, read_chunk_spec, read_policy_meta, require_guided_checkpoint
from robodiff.policy.factory import with_sampling_steps
from robodiff.policy.fast_inference import for_deployment
from robodiff.sim.env import TaskRobot
from robodiff.sim.outcome import TaskOutcome
from robodiff.train.distributed import pick_device

HELP = """
usage: robodiff deploy checkpoint=PATH robot=R [executor=sync|async|rtc|ensemble] [duration_s=S]
                       [episodes=N] [record=PATH] [robot.<key>=...] [key=value ...] [--json]

Runs a checkpoint on a robot in a real-time receding-horizon loop. R is a hardware YAML (name or
path; e.g. robot=so101 robot.port=/dev/ttyACM0, the physical arm) or a simulated task name (the
run then ends with the episode and reports success and score).

  executor=async      inference in the background, next chunk spliced in on time (default)
  executor=sync       inference on the control thread; the robot holds meanwhile
  executor=rtc        async with real-time chunking: each new chunk keeps the actions that run
                      while it is computed (diffusion policies with DDIM; a `robodiff distill`
                      student sampled in 2+ steps, or distilled from a prefix-trained teacher)
  executor=ensemble   ACT temporal ensembling (unimodal policies only)
  duration_s=S        stop after S seconds (default: until e-stop / end of the simulated episode,
                      which lasts the task's max_steps / fps seconds of robot time, stalls
                      included; with episodes=N, a cap on each episode)
  episodes=N          simulated tasks: N episodes in a row, episode i reset with seed+i
  record=PATH         save each episode (observations and the actions really sent); an existing
                      store with the same features is appended to
  inference_delay_s=  add a delay to every inference (emulate a slower computer)
  fps=F               control rate (default: the rate the checkpoint's data was recorded at)
  n_action_steps=K    actions played per chunk before re-planning (default: the checkpoint's)
  sampling_steps=S    denoising steps per chunk: DDIM steps of a teacher, 1-4 consistency steps
                      of a `robodiff distill` student (default: the checkpoint's)
  safety.*            limits (low, high, max_delta), rate_limit (default on), watchdog_s

E-stop: press q or space (interactive terminal), or send SIGINT/SIGTERM: the robot holds, then
disconnects. --json prints loop statistics (period_p50_ms, period_p99_ms, period_error_p99_ms,
overruns, inference_p50_ms, inference_p99_ms, steps, dropped_actions, stalls, success, score,
success_rate, mean_score, episodes, episode_results).
Keys: robodiff/conf/deploy.yaml.
"""

@dataclass
class DeployConfig:
    checkpoint: Optional[str] = MISSING
    robot: Optional[str] = MISSING
    executor: str = MISSING
    duration_s: Optional[float] = bounded(gt=0)
    episodes: int = bounded(ge=1)
    record: Optional[str] = MISSING
    fps: Optional[float] = bounded(gt=0)
    n_action_steps: Optional[int] = bounded(ge=1)
    sampling_steps: Optional[int] = bounded(ge=1)
    inference_delay_s: float = bounded(ge=0)
    device: str = MISSING
    ema: bool = MISSING
    seed: int = bounded(ge=0)
    torch_threads: Optional[int] = bounded(ge=1)
    realtime_priority: bool = MISSING
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    robot_settings: Dict[str, Any] = field(default_factory=dict)


def check_features(policy: Any, robot: Robot, checkpoint: str, robot_name: str) -> None:
    """Every observation the policy reads and its action must exist on the robot, same shape."""
    for key in policy.obs_keys:
        check_provided(key, policy.features[key], robot.observation_features, f"checkpoint {checkpoint}",
                       f"robot '{robot_name}'")
    want = policy.features[policy.action_key]
    have = robot.action_features.get("action")
    if have is None or tuple(have.shape) != tuple(want.shape):
        raise UserError(f"checkpoint {checkpoint} outputs action of shape {list(want.shape)}, robot "
                        f"'{robot_name}' takes {list(have.shape) if have else 'no action'}")
    check_units("action", want, have, f"robot '{robot_name}'")


def record_features(robot: Robot) -> Features:
    features = dict(robot.observation_features)
    features["action"] = robot.action_features["action"]
    features["timestamp"] = Feature("timestamp", (), "float64")
    return features


def build_robot(name: str, seed: int, fps: float | None,
                settings: dict[str, Any] | None = None) -> tuple[Robot, TaskOutcome | None]:
    """`make_robot(name, realtime=True)` (hardware names first, with the run's `robot.<key>=`
    settings); a simulated task's robot comes with its outcome, so the run ends with the episode
    and reports success and score."""
    robot = make_robot(name, settings=settings, realtime=True, seed=seed, fps=fps)
    if isinstance(robot, TaskRobot):
        return robot, TaskOutcome(robot, robot.task.max_steps, robot.task.fps)
    return robot, None


def deploy(policy: Any, robot: Robot, cfg: DeployConfig | Any, fps: float, n_action_steps: int,
           robot_name: str = "robot", task: str | None = None, outcome: TaskOutcome | None = None,
           progress: bool = True, estop: EStop | None = None,
           make_policy: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run `policy` on the (unconnected) `robot` at `fps` until the duration, episode end or e-stop.

    `fps` and `n_action_steps` are the run's, resolved by the command; `task` is the name a
    recording is stored under. With `cfg.episodes` = N > 1 (simulated tasks only) the robot is
    reset for each of N episodes, episode i with seed `cfg.seed + i`; the executor (and its
    inference process) is kept. Without `estop`, one is made from SIGINT/SIGTERM (main thread)
    and the terminal keys. `make_policy` (picklable, builds the same policy) moves background
    inference into its own process; without it, background inference runs on a thread of this one."""
    episodes = int(cfg.episodes)
    if episodes < 1:
        raise UserError(f"episodes={episodes}: need at least 1")
    if episodes > 1 and outcome is None:
        raise UserError(f"episodes={episodes}: robot '{robot_name}' is not a simulated task, which "
                        "alone can be reset between episodes (use duration_s= on hardware)")
    dt = 1.0 / float(fps)
    action_feature = robot.action_features["action"]
    limits = resolve_limits(robot, cfg.safety)
    if limits.dim != int(np.prod(action_feature.shape)):
        raise ConfigError(f"safety limits have {limits.dim} entries, robot '{robot_name}' "
                          f"actions have {int(np.prod(action_feature.shape))}")
    safety_filter = SafetyFilter(limits, dtype=action_feature.dtype)
    watchdog_s = float(cfg.safety.watchdog_s) if cfg.safety.watchdog_s is not None else 2.5 * dt
    check_n_action_steps(policy, n_action_steps)  # fail before creating the executor or the store
    clock = Clock(dt)
    executor = make_executor(cfg.executor, policy, clock, n_action_steps, cfg.inference_delay_s,
                             make_policy=make_policy, torch_threads=_torch_threads(cfg))
    recorder = None
    created = bool(cfg.record) and not Path(cfg.record).exists()
    if cfg.record:
        try:
            store = open_for_append(Path(cfg.record), record_features(robot), fps=float(fps), task=task,
                                    robot=robot_name, who=f"robot '{robot_name}'")
        except BaseException:
            executor.close()
            raise
        recorder = EpisodeRecorder(store)
    own_estop = estop is None
    estop = EStop().install() if estop is None else estop
    rows: list[dict[str, Any]] = []
    recorded: list[int] = []
    totals = {"steps": 0}
    try:
        with robot:
            executor.warm_up(robot.get_observation(), stop=estop.is_set)
            if estop.is_set():
                raise UserError(f"e-stop ({estop.reason}) during the policy's warm-up: nothing was sent "
                                f"to the robot")
            safe = SafeRobot(robot, safety_filter, watchdog_s, estop)
            # One loop, clock and executor for the whole run: loop statistics are run totals.
            loop = EpisodeLoop(safe, clock, estop, progress=progress, desc="deploy",
                               realtime=bool(cfg.realtime_priority) and cfg.executor != "sync")
            keep = None if recorder is None else recorder.add
            for i in range(episodes):
                if i > 0:
                    if estop.is_set():
                        break
                    executor.reset()
                if outcome is not None:
                    # Every episode from its seed, the first too: the robot held through the warm-up.
                    outcome.reset(cfg.seed + i)
                policy.reset()
                stats = loop.run(executor, outcome=outcome, keep=keep, duration_s=cfg.duration_s)
                totals["steps"] += stats["steps"]
                if recorder is not None and len(recorder):
                    recorded.append(recorder.commit())
                if outcome is not None:
                    rows.append({"episode": i, "seed": cfg.seed + i, "success": outcome.success,
                                 "score": round(outcome.score, 4), "steps": stats["steps"],
                                 "stop_reason": stats["stop_reason"], "duration_s": stats["duration_s"],
                                 "episode_time_s": stats.get("episode_time_s")})
    finally:
        if own_estop:
            estop.uninstall()
        executor.close()
        if recorder is not None:
            recorder.close()
            empty = recorder.store.n_episodes == 0
            recorder.store.close()
            if created and empty:
                shutil.rmtree(cfg.record, ignore_errors=True)  # nothing recorded: no empty store left
    stats["steps"] = totals["steps"]
    stats.pop("event", None)
    if rows:
        # An episode cut short by an e-stop counts with what it reached, as with one episode.
        stats["success_rate"] = sum(r["success"] for r in rows) / len(rows)
        stats["mean_score"] = round(float(np.mean([r["score"] for r in rows])), 4)
        stats["success"] = all(r["success"] for r in rows)
        stats["score"] = stats["mean_score"]
        stats["episodes"] = len(rows)
        stats["episode_results"] = rows
        stats["duration_s"] = round(sum(r["duration_s"] for r in rows), 3)
    if recorded:
        stats["recorded_episode"] = recorded[0]
        stats["recorded_episodes"] = recorded
        stats["record"] = str(cfg.record)
    stats.update({"fps": float(fps), "n_action_steps": n_action_steps, "watchdog_s": watchdog_s,
                  "rate_limit": bool(cfg.safety.rate_limit)})
    return stats


def _torch_threads(cfg: Any) -> int:
    return int(cfg.torch_threads or max(1, (os.cpu_count() or 2) - 1))


def load_seeded_policy(checkpoint: str, device: str, ema: bool, seed: int, sampling_steps: int | None) -> Any:
    """The checkpoint's policy with torch seeded: picklable, for the inference process."""
    torch.manual_seed(seed)
    return for_deployment(load_policy(checkpoint, device=device, ema=ema, sampling_steps=sampling_steps), device)


def resolve_fps(override: float | None, meta: dict[str, Any], checkpoint: str) -> float | None:
    """`fps=` when given, else the rate the checkpoint's data was recorded at (None: unknown)."""
    if override is not None:
        return float(override)  # its range is the schema's
    fps = meta.get("fps")
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ConfigError(f"checkpoint {checkpoint} records fps {fps!r}, not a positive control rate; "
                          f"give fps= for this run")
    return float(fps)


SCHEMA = DeployConfig


def load_config(overrides: list[str]) -> Any:
    return validate(compose("deploy", overrides, settings_of=("robot",)), DeployConfig)


def run(args: list[str], overrides: list[str], flags: set[str]) -> dict[str, Any]:
    if args:
        raise UserError(f"unexpected argument '{args[0]}' (use checkpoint=PATH robot=R)")
    cfg = load_config(overrides)
    checkpoint = str(require(cfg, "checkpoint", "deploy"))
    robot_name = str(require(cfg, "robot", "deploy"))
    check_executor(cfg.executor)
    if not Path(checkpoint).exists():
        raise UserError(f"{checkpoint}: no such checkpoint or run directory")
    device = str(pick_device(cfg.device))  # a bad device is a one-line error, not a torch traceback
    spec = read_chunk_spec(checkpoint)
    meta = read_policy_meta(checkpoint)
    if meta.get("task") and meta["task"] != robot_name and robot_name in ROBOTS:  # a simulated task's robot
        print(f"warning: checkpoint {checkpoint} was trained for task '{meta['task']}'; deploying it on "
              f"'{robot_name}'", file=sys.stderr)
    with_sampling_steps(meta["policy"], cfg.sampling_steps)  # a bad value: one line here, not in the inference process
    fps = resolve_fps(cfg.fps, meta, checkpoint)
    n_action_steps = check_n_action_steps(spec, spec.n_action_steps if cfg.n_action_steps is None
                                          else cfg.n_action_steps)
    torch.set_num_threads(_torch_threads(cfg))
    make_policy = None
    if cfg.executor == "sync":
        policy: Any = load_seeded_policy(checkpoint, device, cfg.ema, cfg.seed, cfg.sampling_steps)
    else:
        # The network lives in the inference process only; this one plans with its interface.
        policy = spec
        if cfg.executor == "rtc":
            require_guided_checkpoint(checkpoint, cfg.sampling_steps)  # before the inference process loads it
        make_policy = functools.partial(load_seeded_policy, checkpoint, device, cfg.ema, cfg.seed,
                                        cfg.sampling_steps)
    robot, outcome = build_robot(robot_name, cfg.seed, fps, to_dict(cfg.robot_settings))
    # A simulated task runs at its own rate when neither the run nor the checkpoint names one.
    fps = fps or getattr(robot, "fps", None)
    if fps is None:
        raise ConfigError(f"checkpoint {checkpoint} records no control rate and robot '{robot_name}' has "
                          f"none: set fps=")
    check_features(policy, robot, checkpoint, robot_name)
    stats = deploy(policy, robot, cfg, fps, n_action_steps, robot_name=robot_name, task=meta.get("task"),
                   outcome=outcome, make_policy=make_policy)
    stats.update({"checkpoint": checkpoint, "robot": robot_name, "config": to_dict(cfg)})
    print(_human(stats), file=sys.stderr)
    return stats


def _human(stats: dict[str, Any]) -> str:
    parts = [f"{stats['steps']} steps ({stats['stop_reason']})",
             f"period p50 {stats['period_p50_ms']} ms p99 {stats['period_p99_ms']} ms",
             f"error p99 {stats['period_error_p99_ms']} ms", f"overruns {stats['overruns']}",
             f"inference p50 {stats['inference_p50_ms']} ms p99 {stats['inference_p99_ms']} ms",
             f"dropped {stats['dropped_actions']}", f"stalls {stats['stalls']}"]
    if stats.get("episodes", 1) > 1:
        parts.append(f"{stats['episodes']} episodes: success rate {stats['success_rate']:.2f} "
                     f"mean score {stats['mean_score']}")
    elif "success" in stats:
        parts.append(f"success {stats['success']} score {stats.get('score')}")
    return "deploy: " + ", ".join(parts)
