"""Evaluate a controller in simulation: N seeded episodes, success rate with a Wilson interval.

Episode i is reset with seed `seed + i`, and every source of randomness in it (reset distribution,
expert route, random actions, diffusion noise) is seeded from that number alone, so a result does
not depend on how episodes are spread over worker processes: n_envs=K gives the rows of n_envs=1.

A learned policy is run either as in training evaluation (re-plan every n_action_steps, inference
taking no time), or (`executor=`) through a deployment executor on the episode's own clock, every
inference taking `latency_s` of it (`ExecutorController`): how a policy copes with a slow
computer, measured without a real-time loop and repeatable to the episode.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from robodiff.control.history import ObservationHistory
from robodiff.control.runner import current_position
from robodiff.data.video import write_video
from robodiff.errors import UserError

POLICY_NAMES = ("expert", "random")
# What an executor counts per episode (`ExecutorController.counters`), summed in the summary.
COUNTERS = ("inferences", "dropped_actions", "stalls")
Z_95 = 1.959963984540054


# ------------------------------------------------------------------------------ controllers
class ExpertController:
    def __init__(self, task: Any):
        self.task = task
        self._expert: Any = None

    def reset(self, seed: int) -> None:
        from robodiff.sim.experts import make_expert

        self._expert = make_expert(self.task, seed)
        self._expert.reset()

    def act(self, obs: dict[str, Any], env: Any) -> np.ndarray:
        return np.asarray(self._expert.act(obs, env), dtype=np.float32)


class RandomController:
    """Uniform actions inside the action bounds: the floor any learned policy must beat."""

    def __init__(self, low: np.ndarray, high: np.ndarray):
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self._rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def act(self, obs: dict[str, Any], env: Any) -> np.ndarray:
        return self._rng.uniform(self.low, self.high).astype(np.float32)


class RecedingHorizonController:
    """Every n_action_steps: predict a chunk from the observation history and execute
    `chunk[n_obs_steps-1 : n_obs_steps-1+n_action_steps]` (entry n_obs_steps-1 is the action for the
    newest observation)."""

    def __init__(self, policy: Any):
        self.policy = policy
        self.history = ObservationHistory(policy.n_obs_steps, keys=list(policy.obs_keys))
        self._queue: list[np.ndarray] = []

    def reset(self, seed: int) -> None:
        import torch

        torch.manual_seed(seed)  # the diffusion noise of this episode depends on its seed only
        self.policy.reset()
        self.history.reset()
        self._queue = []

    def act(self, obs: dict[str, Any], env: Any) -> np.ndarray:
        self.history.push(obs)
        if not self._queue:
            chunk = np.asarray(self.policy.predict_action_chunk(self.history.stacked()), dtype=np.float32)
            start = self.policy.n_obs_steps - 1
            self._queue = list(chunk[start:start + self.policy.n_action_steps])
            if not self._queue:
                raise RuntimeError(f"policy returned {len(chunk)} actions; horizon must exceed n_obs_steps - 1")
        return self._queue.pop(0)


class SimulatedClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class ExecutorController:
    """A deployment executor (`sync`, `async`, `rtc`, `ensemble`) on the episode's clock: tick i
    at i * dt, each inference taking `latency_s` of that clock (`SimulatedLatency`), as `robodiff
    deploy executor=E inference_delay_s=L` runs it on the wall clock when inference itself is
    instant. A tick without an action holds the last one (at first, where the robot is:
    `state`'s first entries, the HAL's convention). A sync inference blocks the loop: the robot
    holds, its action goes out when the inference ends, at the nearest tick (deploy sends it
    then and its clock realigns to the grid), and observations meanwhile are never seen."""

    def __init__(self, policy: Any, executor: str, latency_s: float, dt: float):
        self.policy, self.executor_name, self.latency_s, self.dt = policy, executor, float(latency_s), float(dt)
        self.history = ObservationHistory(policy.n_obs_steps, keys=list(policy.obs_keys))
        self.action_dim = int(np.prod(policy.features[policy.action_key].shape))
        self.executor: Any = None  # made by `reset`, before each episode

    def reset(self, seed: int) -> None:
        import torch

        from robodiff.control.executors import make_executor

        torch.manual_seed(seed)
        self.policy.reset()
        self.history.reset()
        # A new executor each episode, latency estimate included: an episode depends on its seed
        # alone, whichever worker ran which episodes before it.
        if self.executor is not None:
            self.executor.close()
        self.clock = SimulatedClock()
        self.executor = make_executor(self.executor_name, self.policy, self.dt, inference_delay_s=self.latency_s,
                                      now=self.clock.now, sleep=self.clock.sleep, simulated=True)
        self.tick = 0
        # A sync inference in progress: ticks the robot still holds, then the action it sends.
        self.waiting = 0
        self.pending: np.ndarray | None = None
        self.last: np.ndarray | None = None

    def counters(self) -> dict[str, int]:
        """This episode's inferences, actions dropped because their time had passed, and stalls
        (as deploy counts them: for sync, inferences longer than a period; for the others,
        ticks after the first chunk with nothing to play)."""
        stats = self.executor.stats()
        return {k: int(stats[k]) for k in COUNTERS}

    def act(self, obs: dict[str, Any], env: Any) -> np.ndarray:
        if self.waiting:
            self.waiting -= 1
            if not self.waiting:
                self.last = self.pending
            return self.last
        if self.last is None:
            self.last = current_position(obs, self.action_dim).astype(np.float32)
        now = self.tick * self.dt
        self.clock.t = now
        self.history.push(obs)
        action = self.executor.act(now, self.history, now)
        planned = self.last if action is None else np.asarray(action, dtype=np.float32)
        waited = math.floor((self.clock.t - now) / self.dt + 0.5)  # ticks a sync inference took
        self.tick += 1 + waited
        if waited:
            self.waiting, self.pending = waited, planned
            return self.last
        self.last = planned
        return planned


def action_bounds(task: Any, env: Any) -> tuple[np.ndarray, np.ndarray]:
    """The action box: the robot's `action_limits`, or a gym env's `action_space`."""
    from robodiff.hal.base import robot_limits

    limits = robot_limits(getattr(env, "robot", None))
    if limits:
        return np.asarray(limits["low"]), np.asarray(limits["high"])
    space = getattr(env, "action_space", None)
    if space is not None and hasattr(space, "low"):
        return np.asarray(space.low), np.asarray(space.high)
    raise UserError(f"task '{task.name}': neither its robot nor its env gives action bounds for policy=random")


def check_policy_features(features: Any, obs_keys: list[str], action_key: str, task: Any) -> None:
    """A learned policy's observation and action features must be the task's (same name, shape)."""
    for key in [*obs_keys, action_key]:
        theirs = task.features.get(key)
        if theirs is None:
            raise UserError(f"checkpoint expects feature '{key}', which task '{task.name}' does not have "
                            f"(task features: {', '.join(task.features)})")
        ours = features[key]
        if tuple(ours.shape) != tuple(theirs.shape):
            raise UserError(f"feature '{key}': checkpoint expects shape {list(ours.shape)}, task "
                            f"'{task.name}' gives {list(theirs.shape)}")


def check_checkpoint_features(checkpoint: str | os.PathLike, task: Any) -> None:
    """Check from policy.json alone, before any worker loads the weights."""
    from robodiff.train.checkpoint import read_chunk_spec

    spec = read_chunk_spec(checkpoint)
    check_policy_features(spec.features, spec.obs_keys, spec.action_key, task)


# ------------------------------------------------------------------------------ episodes
@dataclass
class EvalSpec:
    """Everything a worker process needs to run episodes (picklable for the spawn context)."""

    task: Any
    policy_name: str | None
    checkpoint: str | None
    policy: Any
    device: str
    out: str
    n_videos: int
    video_size: int
    threads: int | None = None
    executor: str | None = None
    latency_s: float = 0.0


class EpisodeRunner:
    """Owns one env and one controller; runs episodes by index."""

    def __init__(self, spec: EvalSpec):
        from robodiff.sim.env import make_env
        from robodiff.sim.tasks import load_task

        if spec.threads:
            import torch

            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.task = load_task(spec.task) if isinstance(spec.task, (str, os.PathLike)) else spec.task
        policy = spec.policy
        if policy is None and spec.checkpoint is not None:
            from robodiff.train.checkpoint import load_policy

            policy = load_policy(spec.checkpoint, device=spec.device)
        needs_images = policy is not None and any(
            self.task.features[k].kind == "image" for k in policy.obs_keys if k in self.task.features)
        self.env = make_env(self.task, render=needs_images)
        if policy is not None and spec.executor is not None:
            from robodiff.policy.fast_inference import for_deployment

            self.controller: Any = ExecutorController(for_deployment(policy), spec.executor, spec.latency_s,
                                                      1.0 / float(self.task.fps))
        elif policy is not None:
            self.controller = RecedingHorizonController(policy)
        elif spec.policy_name == "expert":
            self.controller = ExpertController(self.task)
        else:
            self.controller = RandomController(*action_bounds(self.task, self.env))

    def run(self, index: int, seed: int) -> dict[str, Any]:
        record = index < self.spec.n_videos
        obs = self.env.reset(seed)
        self.controller.reset(seed)
        frames = [self.env.render_frame(self.spec.video_size)] if record else []
        best, success, length, done = -math.inf, False, 0, False
        while not done:
            obs, score, step_success, done, _ = self.env.step(self.controller.act(obs, self.env))
            length += 1
            best = max(best, float(score))
            success = success or bool(step_success)
            if record:
                frames.append(self.env.render_frame(self.spec.video_size))
        row: dict[str, Any] = {"episode": index, "seed": seed, "success": success,
                               "score": best if length else 0.0, "length": length}
        if isinstance(self.controller, ExecutorController):
            row.update(self.controller.counters())
        if record:
            path = Path(self.spec.out) / "videos" / f"episode_{index:03d}_seed{seed}.mp4"
            write_video(path, np.stack(frames), fps=float(self.task.fps))
            row["video"] = str(path)
        return row

    def close(self) -> None:
        self.env.close()


_RUNNER: EpisodeRunner | None = None


def _init_worker(spec: EvalSpec) -> None:
    global _RUNNER
    _RUNNER = EpisodeRunner(spec)


def _run_in_worker(job: tuple[int, int]) -> dict[str, Any]:
    assert _RUNNER is not None
    return _RUNNER.run(*job)


def _rows(spec: EvalSpec, jobs: list[tuple[int, int]], n_envs: int) -> Iterator[dict[str, Any]]:
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


# ------------------------------------------------------------------------------ statistics and report
def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """95 % Wilson score interval: honest at small n and at rates near 0 or 1."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the bound is exactly 0 or 1; floating point would leave it a hair inside.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def plot_results(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.array([r["score"] for r in rows])
    ok = np.array([r["success"] for r in rows])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.bar(np.arange(len(rows)), scores, color=np.where(ok, "tab:green", "tab:red"))
    ax1.set_xlabel("episode")
    ax1.set_ylabel("max score")
    ax1.set_title("score by episode (green: success)")
    ax2.hist(scores, bins=20, color="tab:blue")
    ax2.set_xlabel("max score")
    ax2.set_ylabel("episodes")
    ax2.set_title("score histogram")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def default_out(folder: str, name: str) -> Path:
    """runs/<folder>/<name>_<UTC time>: a fresh output folder per run."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / folder / f"{name}_{stamp}"


def evaluate(task: Any, policy: Any = None, checkpoint: str | os.PathLike | None = None,
             policy_name: str | None = None, episodes: int = 50, seed: int = 0, n_envs: int = 1,
             out: str | os.PathLike | None = None, n_videos: int = 3, device: str = "cpu",
             video_size: int = 256, executor: str | None = None, latency_s: float = 0.0) -> dict[str, Any]:
    """Run `episodes` seeded episodes of one controller (exactly one of policy / checkpoint /
    policy_name="expert"|"random") and write episodes.jsonl, summary.json, eval.png and videos.
    `executor`: run a learned policy through that deployment executor, inference taking
    `latency_s` of the episode's clock (`ExecutorController`)."""
    from robodiff.sim.tasks import load_task

    chosen = [x for x in (policy, checkpoint, policy_name) if x is not None]
    if len(chosen) != 1:
        raise UserError("give exactly one of checkpoint=PATH or policy=expert|random")
    if policy_name is not None and policy_name not in POLICY_NAMES:
        raise UserError(f"unknown policy '{policy_name}' for eval (use policy=expert|random or checkpoint=PATH)")
    if checkpoint is not None and not Path(checkpoint).exists():
        raise UserError(f"checkpoint '{checkpoint}' does not exist")
    if episodes < 1:
        raise UserError(f"episodes={episodes}: need at least 1")
    if n_envs < 1:
        raise UserError(f"n_envs={n_envs}: need at least 1")
    if executor is not None:
        from robodiff.control.executors import check_executor

        check_executor(executor)
        if policy_name is not None:
            raise UserError(f"executor={executor} runs a learned policy: give checkpoint=PATH, not policy={policy_name}")
    if latency_s < 0 or not math.isfinite(latency_s):
        raise UserError(f"latency_s={latency_s}: need a finite number >= 0")
    if latency_s > 0 and executor is None:
        raise UserError("latency_s= needs executor=sync|async|rtc|ensemble (plain evaluation infers in no time)")
    if executor == "rtc" and checkpoint is not None:
        from robodiff.train.checkpoint import require_guided_checkpoint

        require_guided_checkpoint(str(checkpoint))
    elif executor == "rtc" and policy is not None:  # here, not in a worker that would only crash
        from robodiff.control.executors import require_guided
        from robodiff.policy.fast_inference import for_deployment

        require_guided(for_deployment(policy))
    spec_task = load_task(task) if isinstance(task, (str, os.PathLike)) else task
    if executor is not None and "state" not in spec_task.features:
        raise UserError(f"executor= holds the robot where its 'state' says it is; task '{spec_task.name}' "
                        f"observes no 'state'")
    if checkpoint is not None:
        check_checkpoint_features(checkpoint, spec_task)
    elif policy is not None:
        check_policy_features(policy.features, list(policy.obs_keys), policy.action_key, spec_task)
    label = policy_name or (str(checkpoint) if checkpoint is not None else type(policy).__name__)
    out_dir = Path(out) if out is not None else default_out("eval", f"{spec_task.name}_{Path(label).name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    n_envs = min(n_envs, episodes)
    spec = EvalSpec(task=task if isinstance(task, (str, os.PathLike)) else spec_task,
                    policy_name=policy_name, checkpoint=None if checkpoint is None else str(checkpoint),
                    policy=policy, device=device, out=str(out_dir), n_videos=n_videos,
                    video_size=video_size, threads=max(1, (os.cpu_count() or 1) // n_envs) if n_envs > 1 else None,
                    executor=executor, latency_s=float(latency_s))
    jobs = [(i, seed + i) for i in range(episodes)]
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with open(out_dir / "episodes.jsonl", "w") as log:
        bar = tqdm(_rows(spec, jobs, n_envs), total=episodes, desc=f"eval {spec_task.name}",
                   unit="ep", dynamic_ncols=True)
        for row in bar:
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.set_postfix(success=f"{np.mean([r['success'] for r in rows]):.2f}")
    successes = sum(r["success"] for r in rows)
    lo, hi = wilson_interval(successes, len(rows))
    summary = {
        "task": spec_task.name,
        "policy": label,
        "success_rate": successes / len(rows),
        "mean_score": float(np.mean([r["score"] for r in rows])),
        "episodes": len(rows),
        "successes": successes,
        "ci95": [lo, hi],
        "mean_length": float(np.mean([r["length"] for r in rows])),
        "seed": seed,
        "n_envs": n_envs,
        "executor": executor,
        "latency_s": latency_s,
        **({k: sum(r[k] for r in rows) for k in COUNTERS} if executor is not None else {}),
        "seconds": round(time.perf_counter() - started, 2),
        "out": str(out_dir),
        "videos": [r["video"] for r in rows if "video" in r],
        "plot": str(out_dir / "eval.png"),
    }
    plot_results(rows, out_dir / "eval.png",
                 f"{spec_task.name} / {Path(label).name}: success {summary['success_rate']:.2f} "
                 f"[{lo:.2f}, {hi:.2f}], mean score {summary['mean_score']:.3f}")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
