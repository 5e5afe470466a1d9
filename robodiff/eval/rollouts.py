"""Rollouts: the episode loop on a simulated clock, in this process or in worker processes.

Episode i is reset with seed `seed + i`, and every source of randomness in it (reset distribution,
expert route, random actions, diffusion noise) is seeded from that number alone, so a result does
not depend on how episodes are spread over worker processes: n_envs=K gives the rows of n_envs=1.

A learned policy runs behind an executor on the simulated clock: by default `sync` with inference
taking no time (re-plan every n_action_steps, as in training evaluation), or (`executor=`) the
deployment executor with every inference taking `latency_s` of the episode's clock: how a policy
copes with a slow computer, measured without a real-time loop and repeatable to the episode.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from robodiff.control.clock import SimulatedClock
from robodiff.control.executors import SyncExecutor, make_executor
from robodiff.control.loop import EpisodeLoop
from robodiff.control.safety import SafeRobot, SafetyFilter, resolve_limits
from robodiff.control.sources import ActionSource, TeleopSource
from robodiff.data.video import write_video
from robodiff.hal.base import robot_limits
from robodiff.policy.checkpoint import load_policy
from robodiff.policy.fast_inference import for_deployment
from robodiff.sim.env import task_robot
from robodiff.sim.experts import ExpertTeleop
from robodiff.sim.outcome import TaskOutcome
from robodiff.sim.tasks import as_task

# What an executor counts per episode, in each row and summed in the summary (executor= only).
COUNTERS = ("inferences", "dropped_actions", "stalls")


class RandomSource(ActionSource):
    """Uniform actions inside the action bounds: the floor any learned policy must beat."""

    name = "random"

    def __init__(self, low: np.ndarray, high: np.ndarray, seed: int):
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self.rng = np.random.default_rng(seed)

    def act(self, now: float, obs: dict[str, Any], t_obs: float) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(np.float32)


@dataclass
class EvalSpec:
    """Everything a worker process needs to run episodes (picklable for the spawn context)."""

    task: Any
    controller: str  # expert | random | policy
    checkpoint: str | None
    policy: Any
    n_action_steps: int | None
    sampling_steps: int | None  # a checkpoint's denoising steps (None: its own)
    device: str
    out: str  # where this run writes (a staging folder)
    results_dir: str  # where its results are published when it completes (paths in rows name it)
    n_videos: int
    video_size: int
    safety: dict[str, Any]
    threads: int | None = None
    executor: str | None = None
    latency_s: float = 0.0


VIDEOS = "videos"  # the folder of an evaluation's rollout videos


class EpisodeRunner:
    """Owns one task robot, its loop and its controller; runs episodes by index."""

    def __init__(self, spec: EvalSpec):
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.task = as_task(spec.task)
        policy = spec.policy
        if policy is None and spec.checkpoint is not None:
            policy = load_policy(spec.checkpoint, device=spec.device, sampling_steps=spec.sampling_steps)
        needs_images = policy is not None and any(
            self.task.features[k].kind == "image" for k in policy.obs_keys if k in self.task.features)
        self.robot = task_robot(self.task, render=needs_images)
        self.robot.connect()
        # Eval's executor runs the policy as deploy does (`for_deployment`); plain eval runs it as
        # training evaluation does.
        self.policy = for_deployment(policy) if policy is not None and spec.executor else policy
        feature = self.robot.action_features["action"]
        limits = resolve_limits(self.robot, SimpleNamespace(**spec.safety))
        self.safe = SafeRobot(self.robot, SafetyFilter(limits, dtype=feature.dtype), None, None)
        self.clock = SimulatedClock(1.0 / float(self.task.fps))
        self.loop = EpisodeLoop(self.safe, self.clock)
        self.outcome = TaskOutcome(self.robot, self.task.max_steps, self.task.fps)
        self.expert = ExpertTeleop(self.robot) if spec.controller == "expert" else None
        if self.expert is not None:
            self.expert.connect()

    def _source(self, seed: int) -> ActionSource:
        """A fresh source per episode: an episode depends on its seed alone, whichever worker
        ran which episodes before it."""
        if self.expert is not None:
            self.expert.reset(seed)
            return TeleopSource(self.expert, "action")
        if self.policy is None:
            limits = robot_limits(self.robot)
            return RandomSource(limits["low"], limits["high"], seed)
        torch.manual_seed(seed)  # the diffusion noise of this episode depends on its seed only
        self.policy.reset()
        if self.spec.executor is None:
            return SyncExecutor(self.policy, self.clock, self.spec.n_action_steps)
        return make_executor(self.spec.executor, self.policy, self.clock, self.spec.n_action_steps,
                             delay_s=self.spec.latency_s)

    def run(self, index: int, seed: int) -> dict[str, Any]:
        record = index < self.spec.n_videos
        self.outcome.reset(seed)
        source = self._source(seed)
        frames = [self.robot.render_frame(self.spec.video_size)] if record else []
        keep = (lambda _: frames.append(self.robot.render_frame(self.spec.video_size))) if record else None
        try:
            stats = self.loop.run(source, outcome=self.outcome, keep=keep)
        finally:
            source.close()
        row: dict[str, Any] = {"episode": index, "seed": seed, "success": self.outcome.success,
                               "score": self.outcome.score, "length": stats["steps"]}
        if self.spec.executor is not None:
            row.update({k: int(stats[k]) for k in COUNTERS})
        if record:
            name = Path(VIDEOS) / f"episode_{index:03d}_seed{seed}.mp4"
            write_video(Path(self.spec.out) / name, np.stack(frames), fps=float(self.task.fps))
            row["video"] = str(Path(self.spec.results_dir) / name)
        return row

    def close(self) -> None:
        if self.expert is not None:
            self.expert.disconnect()
        self.robot.close()


_RUNNER: EpisodeRunner | None = None


def _init_worker(spec: EvalSpec) -> None:
    global _RUNNER
    _RUNNER = EpisodeRunner(spec)


def _run_in_worker(job: tuple[int, int]) -> dict[str, Any]:
    assert _RUNNER is not None
    return _RUNNER.run(*job)


def rows(spec: EvalSpec, jobs: list[tuple[int, int]], n_envs: int) -> Iterator[dict[str, Any]]:
    """The rows of `jobs` ((index, seed) pairs), in order."""
    if n_envs <= 1:
        runner = EpisodeRunner(spec)
        try:
            for job in jobs:
                yield runner.run(*job)
        finally:
            runner.close()
        return
    # spawn, not fork: MuJoCo's GL context and torch's thread pool do not survive a fork.
    # ProcessPoolExecutor, not Pool: a worker that dies in its initializer raises BrokenProcessPool
    # instead of being respawned forever.
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(n_envs, mp_context=ctx, initializer=_init_worker, initargs=(spec,)) as pool:
        yield from pool.map(_run_in_worker, jobs)
