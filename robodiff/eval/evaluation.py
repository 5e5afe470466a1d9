"""Evaluate a controller in simulation: N seeded episodes, success rate with a Wilson interval."""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from robodiff.control.executors import check_executor, check_n_action_steps
from robodiff.errors import UserError
from robodiff.features import check_units
from robodiff.eval.report import default_out, plot_results
from robodiff.eval.rollouts import COUNTERS, VIDEOS, EvalSpec, rows
from robodiff.eval.stats import wilson_interval
from robodiff.policy.checkpoint import load_policy, read_chunk_spec, read_policy_meta, require_guided_checkpoint
from robodiff.policy.fast_inference import for_deployment
from robodiff.policy.guided import require_guided
from robodiff.sim.tasks import as_task
from robodiff.progress import progress_bar
from robodiff import jsonio

POLICY_NAMES = ("expert", "random")


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
        check_units(key, ours, theirs, f"task '{task.name}'")


def evaluate(task: Any, safety: DictConfig, policy: Any = None, checkpoint: str | os.PathLike | None = None,
             policy_name: str | None = None, n_action_steps: int | None = None, sampling_steps: int | None = None,
             episodes: int = 50,
             seed: int = 0, n_envs: int = 1, out: str | os.PathLike | None = None, n_videos: int = 3,
             device: str = "cpu", video_size: int = 256, executor: str | None = None,
             latency_s: float = 0.0) -> dict[str, Any]:
    """Run `episodes` seeded episodes of one controller (exactly one of policy / checkpoint /
    policy_name="expert"|"random") and write episodes.jsonl, summary.json, eval.png and videos.
    A learned policy needs `n_action_steps` (resolved by the caller); `safety` is the composed `safety.*`
    block. `executor`: run a learned policy through that deployment executor, inference taking
    `latency_s` of the episode's clock. `sampling_steps`: a diffusion checkpoint's denoising steps
    (None: its own)."""
    chosen = [x for x in (policy, checkpoint, policy_name) if x is not None]
    if len(chosen) != 1:
        raise UserError("give exactly one of checkpoint=PATH or policy=expert|random")
    if sampling_steps is not None and checkpoint is None:
        raise UserError("sampling_steps= is for a checkpoint (checkpoint=PATH)")
    if policy_name is not None and policy_name not in POLICY_NAMES:
        raise UserError(f"unknown policy '{policy_name}' for eval (use policy=expert|random or checkpoint=PATH)")
    if checkpoint is not None and not Path(checkpoint).exists():
        raise UserError(f"checkpoint '{checkpoint}' does not exist")
    if episodes < 1:
        raise UserError(f"episodes={episodes}: need at least 1")
    if n_envs < 1:
        raise UserError(f"n_envs={n_envs}: need at least 1")
    if executor is not None:
        check_executor(executor)
        if policy_name is not None:
            raise UserError(f"executor={executor} runs a learned policy: give checkpoint=PATH, not policy={policy_name}")
    if latency_s < 0 or not math.isfinite(latency_s):
        raise UserError(f"latency_s={latency_s}: need a finite number >= 0")
    if latency_s > 0 and executor is None:
        raise UserError("latency_s= needs executor=sync|async|rtc|ensemble (plain evaluation infers in no time)")
    spec_task = as_task(task)
    if executor is not None and "state" not in spec_task.features:
        raise UserError(f"executor= holds the robot where its 'state' says it is; task '{spec_task.name}' "
                        f"observes no 'state'")
    if policy_name is None:
        chunk = read_chunk_spec(checkpoint) if checkpoint is not None else policy
        trained_for = read_policy_meta(checkpoint).get("task") if checkpoint is not None else None
        if trained_for and trained_for != spec_task.name:  # allowed (transfer), never unnoticed
            print(f"warning: checkpoint {checkpoint} was trained for task '{trained_for}'; evaluating it on "
                  f"'{spec_task.name}'", file=sys.stderr)
        check_policy_features(chunk.features, list(chunk.obs_keys), chunk.action_key, spec_task)
        if n_action_steps is None:
            raise UserError("a learned policy needs n_action_steps")
        check_n_action_steps(chunk, n_action_steps)
        if executor == "rtc":  # here, not in a worker that would only crash
            if checkpoint is not None:
                require_guided_checkpoint(str(checkpoint), sampling_steps)
            else:
                require_guided(for_deployment(policy))
    if checkpoint is not None:
        # Load it here, before any episode: a checkpoint that does not load is one line, not an
        # error from a worker. One process runs the episodes with this copy; workers load their own.
        loaded = load_policy(checkpoint, device=device, sampling_steps=sampling_steps)
        policy = loaded if n_envs <= 1 else None
    label = policy_name or (str(checkpoint) if checkpoint is not None else type(policy).__name__)
    out_dir = Path(out) if out is not None else default_out("eval", f"{spec_task.name}_{Path(label).name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Everything is written beside the previous results and replaces them only once complete: a
    # failed or interrupted evaluation leaves an earlier one in the same folder as it was.
    staging = out_dir / f".eval-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    n_envs = min(n_envs, episodes)
    spec = EvalSpec(task=task if isinstance(task, (str, os.PathLike)) else spec_task,
                    controller=policy_name or "policy",
                    checkpoint=None if checkpoint is None else str(checkpoint), policy=policy,
                    n_action_steps=n_action_steps, sampling_steps=sampling_steps, device=device, out=str(staging),
                    results_dir=str(out_dir), n_videos=n_videos,
                    video_size=video_size,
                    safety=OmegaConf.to_container(safety, resolve=True),
                    threads=max(1, (os.cpu_count() or 1) // n_envs) if n_envs > 1 else None,
                    executor=executor, latency_s=float(latency_s))
    try:
        summary = _run(spec, spec_task.name, label, episodes, seed, n_envs)
        publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def publish(staging: Path, out_dir: Path) -> None:
    """Move each file and folder of `staging` into `out_dir`, replacing what is there: a file by
    one rename, a folder by renaming the old one away first."""
    if not (staging / VIDEOS).exists() and (out_dir / VIDEOS).is_dir():
        shutil.rmtree(out_dir / VIDEOS)  # an earlier run's videos would pass for this run's
    for item in sorted(staging.iterdir()):
        target = out_dir / item.name
        if item.is_dir() and target.exists():
            old = out_dir / f".{item.name}.old-{os.getpid()}"
            os.rename(target, old)
            os.rename(item, target)
            shutil.rmtree(old)
        else:
            os.replace(item, target)


def _run(spec: EvalSpec, task_name: str, label: str, episodes: int, seed: int, n_envs: int) -> dict[str, Any]:
    """The episodes of `spec`, written to its staging folder; the summary names `results_dir`."""
    staging, out_dir = Path(spec.out), Path(spec.results_dir)
    jobs = [(i, seed + i) for i in range(episodes)]
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    with open(staging / "episodes.jsonl", "w") as log:
        bar = progress_bar(rows(spec, jobs, n_envs), total=episodes, desc=f"eval {task_name}", unit="ep")
        for row in bar:
            results.append(row)
            log.write(jsonio.dumps(row) + "\n")
            log.flush()
            bar.set_postfix(success=f"{np.mean([r['success'] for r in results]):.2f}")
    successes = sum(r["success"] for r in results)
    lo, hi = wilson_interval(successes, len(results))
    summary = {
        "task": task_name,
        "policy": label,
        "success_rate": successes / len(results),
        "mean_score": float(np.mean([r["score"] for r in results])),
        "episodes": len(results),
        "successes": successes,
        "ci95": [lo, hi],
        "mean_length": float(np.mean([r["length"] for r in results])),
        "seed": seed,
        "n_envs": n_envs,
        "n_action_steps": spec.n_action_steps,
        "sampling_steps": spec.sampling_steps,
        "executor": spec.executor,
        "latency_s": spec.latency_s,
        "safety_rate_limit": bool(spec.safety["rate_limit"]),
        **({k: sum(r[k] for r in results) for k in COUNTERS} if spec.executor is not None else {}),
        "seconds": round(time.perf_counter() - started, 2),
        "out": str(out_dir),
        "videos": [r["video"] for r in results if "video" in r],
        "plot": str(out_dir / "eval.png"),
    }
    plot_results(results, staging / "eval.png",
                 f"{task_name} / {Path(label).name}: success {summary['success_rate']:.2f} "
                 f"[{lo:.2f}, {hi:.2f}], mean score {summary['mean_score']:.3f}")
    (staging / "summary.json").write_text(jsonio.dumps(summary, indent=2) + "\n")
    return summary
