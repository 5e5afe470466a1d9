"""`robodiff deploy checkpoint=PATH robot=R [executor=async] [duration_s=S] [record=PATH] [--json]`."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from robodiff.config import compose, require, to_dict, validate
from robodiff.control.clock import Clock
from robodiff.control.executors import check_executor, make_executor, resolve_n_action_steps
from robodiff.control.history import ObservationHistory
from robodiff.control.runner import Runner
from robodiff.control.safety import EStop, SafeRobot, SafetyFilter, resolve_limits
from robodiff.data.store import EpisodeRecorder, EpisodeStore
from robodiff.errors import ConfigError, UserError
from robodiff.features import Feature, Features
from robodiff.hal.base import Robot

HELP = """
usage: robodiff deploy checkpoint=PATH robot=R [executor=sync|async|rtc|ensemble] [duration_s=S]
                       [episodes=N] [record=PATH] [key=value ...] [--json]

Runs a checkpoint on a robot in a real-time receding-horizon loop. R is a hardware YAML (name or
path) or a simulated task name (the run then ends with the episode and reports success and score).

  executor=async      inference in the background, next chunk spliced in on time (default)
  executor=sync       inference on the control thread; the robot holds meanwhile
  executor=rtc        async with real-time chunking: each new chunk keeps the actions that run
                      while it is computed (diffusion policies with DDIM)
  executor=ensemble   ACT temporal ensembling (unimodal policies only)
  duration_s=S        stop after S seconds (default: until e-stop / end of the simulated episode,
                      which lasts the task's max_steps / fps seconds of robot time, stalls
                      included; with episodes=N, a cap on each episode)
  episodes=N          simulated tasks: N episodes in a row, episode i reset with seed+i
  record=PATH         save each episode (observations and the actions really sent)
  inference_delay_s=  add a delay to every inference (emulate a slower computer)
  safety.*            limits (low, high, max_delta), watchdog_s; safety.enabled=false drops the filter

E-stop: press q or space (interactive terminal), or send SIGINT/SIGTERM: the robot holds, then
disconnects. --json prints loop statistics (period_p50_ms, period_p99_ms, period_error_p99_ms,
overruns, inference_p50_ms, inference_p99_ms, steps, dropped_actions, stalls, success, score,
success_rate, mean_score, episodes, episode_results).
Keys: robodiff/conf/deploy.yaml.
"""

DEFAULT_FPS = 10.0


@dataclass
class SafetyConfig:
    enabled: bool = True
    low: Optional[list[float]] = None
    high: Optional[list[float]] = None
    max_delta: Optional[Any] = None
    max_delta_fraction: float = 0.1
    watchdog_s: Optional[float] = None


@dataclass
class DeployConfig:
    checkpoint: Optional[str] = None
    robot: Optional[str] = None
    executor: str = "async"
    duration_s: Optional[float] = None
    episodes: int = 1
    record: Optional[str] = None
    fps: Optional[float] = None
    n_action_steps: Optional[int] = None
    inference_delay_s: float = 0.0
    device: str = "cpu"
    ema: bool = True
    seed: int = 0
    torch_threads: Optional[int] = None
    realtime_priority: bool = True
    safety: SafetyConfig = field(default_factory=SafetyConfig)


def check_features(policy: Any, robot: Robot, checkpoint: str, robot_name: str) -> None:
    """Every observation the policy reads and its action must exist on the robot, same shape."""
    theirs = robot.observation_features
    for key in policy.obs_keys:
        want = policy.features[key]
        have = theirs.get(key)
        if have is None:
            raise UserError(f"checkpoint {checkpoint} reads observation '{key}' that robot "
                            f"'{robot_name}' does not provide (it has {', '.join(sorted(theirs))})")
        if tuple(have.shape) != tuple(want.shape):
            raise UserError(f"checkpoint {checkpoint} expects observation '{key}' of shape "
                            f"{list(want.shape)}, robot '{robot_name}' gives {list(have.shape)}")
    want = policy.features[policy.action_key]
    have = robot.action_features.get("action")
    if have is None or tuple(have.shape) != tuple(want.shape):
        raise UserError(f"checkpoint {checkpoint} outputs action of shape {list(want.shape)}, robot "
                        f"'{robot_name}' takes {list(have.shape) if have else 'no action'}")


def record_features(robot: Robot) -> Features:
    features = dict(robot.observation_features)
    features["action"] = robot.action_features["action"]
    features["timestamp"] = Feature("timestamp", (), "float64")
    return features


class TaskOutcome:
    """A simulated task's scoring during a run: best score, success, and when the episode ends.

    An episode lasts the task's time budget (`max_steps / fps` seconds) on the robot's own clock,
    which for the real-time simulator is the wall clock since the reset: time the robot spends
    holding while a policy thinks counts, as it would on hardware. `robodiff eval` steps the
    simulator once per action, so there the same budget is `max_steps` actions.
    `seed` is the one the robot's first reset (at connect) was sampled with."""

    def __init__(self, robot: Any, logic: Any, time_limit_s: float, seed: int | None = None):
        """The simulator advances at most `MAX_CATCH_UP_S` over one stall (see `MujocoRobot`): a
        hold longer than that counts as that long."""
        self.robot, self.logic, self.time_limit_s = robot, logic, float(time_limit_s)
        self.seed = seed
        self.best = 0.0
        self.success = False

    def reset(self, seed: int) -> None:
        """Start a new episode from the task's reset drawn with `seed` alone, as `robodiff eval`
        resets its episode with that seed (so the same seeds give the same starts)."""
        rng = np.random.default_rng(seed)
        self.robot.reset(lambda model, data: self.logic.reset(model, data, rng))
        self.best = 0.0
        self.success = False

    def __call__(self) -> dict[str, Any]:
        score, success, _ = self.logic.evaluate(self.robot.model, self.robot.data)
        self.best = max(self.best, float(score))
        self.success = self.success or bool(success)
        elapsed = float(self.robot.data.time)  # simulated seconds since the reset
        return {"done": self.success or elapsed >= self.time_limit_s, "success": self.success,
                "score": round(self.best, 4), "episode_time_s": round(elapsed, 3)}


def build_robot(name: str, seed: int) -> tuple[Robot, TaskOutcome | None]:
    """As `make_robot(name, realtime=True)` (hardware names first), but a simulated task's robot
    comes with its scoring, which `make_robot` does not return."""
    from robodiff.hal import make_robot
    from robodiff.hal.hardware import read_yaml
    from robodiff.paths import asset_dir

    path = Path(name)
    is_file = path.suffix in (".yaml", ".yml") and path.is_file()
    is_hardware = (asset_dir("hardware") / f"{name}.yaml").is_file() or (
        is_file and "driver" in read_yaml(path))
    if not is_hardware and (asset_dir("tasks") / f"{name}.yaml").is_file():
        from robodiff.sim.env import build_task_robot
        from robodiff.sim.tasks import load_task

        task = load_task(name)
        robot, logic = build_task_robot(task, render=True, realtime=True, seed=seed)
        return robot, TaskOutcome(robot, logic, task.max_steps / task.fps, seed=seed)
    return make_robot(name, realtime=True), None


def deploy(policy: Any, robot: Robot, cfg: DeployConfig | Any, robot_name: str = "robot",
           outcome: TaskOutcome | None = None, progress: bool = True,
           estop: EStop | None = None, make_policy: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run `policy` on the (unconnected) `robot` until the duration, episode end or e-stop.

    With `cfg.episodes` = N > 1 (simulated tasks only) the robot is reset for each of N episodes,
    episode i with seed `outcome.seed + i`; the executor (and its inference process) is kept.
    Without `estop`, one is made from SIGINT/SIGTERM (main thread) and the terminal keys.
    `make_policy` (picklable, builds the same policy) moves background inference into its own
    process; without it, background inference runs on a thread of this one."""
    episodes = int(getattr(cfg, "episodes", 1))
    if episodes < 1:
        raise UserError(f"episodes={episodes}: need at least 1")
    if episodes > 1 and outcome is None:
        raise UserError(f"episodes={episodes}: robot '{robot_name}' is not a simulated task, which "
                        "alone can be reset between episodes (use duration_s= on hardware)")
    fps = float(cfg.fps or getattr(robot, "fps", None) or DEFAULT_FPS)
    dt = 1.0 / fps
    safety = cfg.safety
    action_feature = robot.action_features["action"]
    safety_filter = None
    if safety.enabled:
        limits = resolve_limits(robot, _list(safety.low), _list(safety.high),
                                _list(safety.max_delta), safety.max_delta_fraction)
        if limits.dim != int(np.prod(action_feature.shape)):
            raise ConfigError(f"safety limits have {limits.dim} entries, robot '{robot_name}' "
                              f"actions have {int(np.prod(action_feature.shape))}")
        safety_filter = SafetyFilter(limits, dtype=action_feature.dtype)
    watchdog_s = float(safety.watchdog_s) if safety.watchdog_s is not None else 2.5 * dt
    resolve_n_action_steps(policy, cfg.n_action_steps)  # fail before creating the store
    recorder = None
    if cfg.record:
        task = robot_name if outcome is not None else getattr(policy, "task", None)
        store = EpisodeStore.create(Path(cfg.record), record_features(robot), fps=fps, task=task,
                                    robot=robot_name)
        recorder = EpisodeRecorder(store)
    executor = make_executor(cfg.executor, policy, dt, cfg.n_action_steps, cfg.inference_delay_s,
                             make_policy=make_policy, torch_threads=_torch_threads(cfg))
    own_estop = estop is None
    estop = EStop().install() if estop is None else estop
    rows: list[dict[str, Any]] = []
    recorded: list[int] = []
    try:
        with robot:
            history = ObservationHistory(policy.n_obs_steps, keys=list(policy.obs_keys))
            history.push(robot.get_observation())
            executor.warm_up(history.stacked(), stop=estop.is_set)
            if estop.is_set():
                raise UserError(f"e-stop ({estop.reason}) during the policy's warm-up: nothing was sent "
                                f"to the robot")
            safe = SafeRobot(robot, safety_filter, watchdog_s, estop)
            # One runner, clock and executor for the whole run: loop statistics are run totals.
            runner = Runner(safe, executor, Clock(dt), history, estop, recorder=recorder,
                            outcome=outcome, progress=progress,
                            realtime=bool(cfg.realtime_priority) and cfg.executor != "sync")
            for i in range(episodes):
                if i > 0:
                    if estop.is_set():
                        break
                    executor.reset()
                if outcome is not None:
                    # Every episode from its seed, the first too: the robot held through the warm-up.
                    outcome.reset(_episode_seed(outcome, i))
                policy.reset()
                steps_before = runner.steps
                stats = runner.run(cfg.duration_s)
                if recorder is not None and len(recorder):
                    recorded.append(recorder.commit())
                if outcome is not None:
                    rows.append({"episode": i, "seed": _episode_seed(outcome, i),
                                 "success": bool(stats.get("success", False)),
                                 "score": float(stats.get("score", 0.0)),
                                 "steps": runner.steps - steps_before,
                                 "stop_reason": stats["stop_reason"],
                                 "duration_s": stats["duration_s"],
                                 "episode_time_s": stats.get("episode_time_s")})
    finally:
        if own_estop:
            estop.uninstall()
        executor.close()
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
    stats.update({"fps": fps, "watchdog_s": watchdog_s, "safety": bool(safety.enabled)})
    return stats


def _episode_seed(outcome: TaskOutcome, index: int) -> int | None:
    return None if outcome.seed is None else outcome.seed + index


def _torch_threads(cfg: Any) -> int:
    return int(cfg.torch_threads or max(1, (os.cpu_count() or 2) - 1))


def load_seeded_policy(checkpoint: str, device: str, ema: bool, seed: int) -> Any:
    """The checkpoint's policy with torch seeded: picklable, for the inference process."""
    import torch

    from robodiff.policy.fast_inference import for_deployment
    from robodiff.train.checkpoint import load_policy

    torch.manual_seed(seed)
    return for_deployment(load_policy(checkpoint, device=device, ema=ema), device)


def _list(value: Any) -> Any:
    if value is None or isinstance(value, (int, float)):
        return value
    return [float(v) for v in value]


def run(args: list[str], overrides: list[str], flags: set[str]) -> dict[str, Any]:
    if args:
        raise UserError(f"unexpected argument '{args[0]}' (use checkpoint=PATH robot=R)")
    cfg = validate(compose("deploy", overrides), DeployConfig)
    checkpoint = str(require(cfg, "checkpoint", "deploy"))
    robot_name = str(require(cfg, "robot", "deploy"))
    check_executor(cfg.executor)
    if cfg.episodes < 1:  # before the slow imports below
        raise UserError(f"episodes={cfg.episodes}: need at least 1")
    if not Path(checkpoint).exists():  # before the slow imports below
        raise UserError(f"{checkpoint}: no such checkpoint or run directory")
    import torch

    from robodiff.train.checkpoint import read_chunk_spec, require_guided_checkpoint
    from robodiff.train.distributed import pick_device

    device = str(pick_device(cfg.device))  # a bad device is a one-line error, not a torch traceback
    torch.set_num_threads(_torch_threads(cfg))
    make_policy = None
    if cfg.executor == "sync":
        policy: Any = load_seeded_policy(checkpoint, device, cfg.ema, cfg.seed)
    else:
        # The network lives in the inference process only; this one plans with its interface.
        policy = read_chunk_spec(checkpoint)
        if cfg.executor == "rtc":
            require_guided_checkpoint(checkpoint)  # before the inference process loads it
        make_policy = functools.partial(load_seeded_policy, checkpoint, device, cfg.ema, cfg.seed)
    robot, outcome = build_robot(robot_name, cfg.seed)
    check_features(policy, robot, checkpoint, robot_name)
    stats = deploy(policy, robot, cfg, robot_name=robot_name, outcome=outcome, make_policy=make_policy)
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
