"""Simulation speed: control steps per second for each MuJoCo task, with every camera the task
declares rendered (at its feature size) and without rendering, and how many times faster than
real time that is at the task's control rate.

Keys (conf/bench_sim.yaml): `steps=N` timed control steps per measurement, `tasks=[a,b]` (null:
every MuJoCo task), `seed`. Random actions within the robot's limits; episodes are reset when
they end (reset time is included, as in evaluation).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from omegaconf import MISSING, DictConfig

from robodiff.bench import machine
from robodiff.config import bounded, compose, validate
from robodiff.hal.hardware import read_yaml
from robodiff.paths import asset_dir
from robodiff.sim.env import SimEnv
from robodiff.sim.tasks import load_task
from robodiff.progress import progress_bar


@dataclass
class BenchSimConfig:
    steps: int = bounded(ge=1)
    tasks: Optional[list[str]] = MISSING
    seed: int = bounded(ge=0)


SCHEMA = BenchSimConfig


def load_config(overrides: list[str]) -> DictConfig:
    return validate(compose("bench_sim", overrides), BenchSimConfig)


def steps_per_second(task: str, render: bool, steps: int, seed: int = 0) -> float:
    env = SimEnv(load_task(task), render=render)
    rng = np.random.default_rng(seed)
    low, high = env.robot.action_limits["action"]
    try:
        env.reset(seed)
        start = time.perf_counter()
        for _ in range(steps):
            *_, done, _ = env.step(rng.uniform(low, high))
            if done:
                env.reset(int(rng.integers(2**31 - 1)))
        return steps / (time.perf_counter() - start)
    finally:
        env.close()


def run(overrides: list[str], flags: set[str]) -> dict:
    cfg = load_config(overrides)
    steps, seed = int(cfg.steps), int(cfg.seed)
    if cfg.tasks is not None:
        tasks = [str(t) for t in cfg.tasks]
        for task in tasks:
            load_task(task)  # an unknown name fails here, before any measurement
    else:
        tasks = [p.stem for p in sorted(asset_dir("tasks").glob("*.yaml"))
                 if read_yaml(p).get("kind", "mujoco") == "mujoco"]
    results: dict[str, dict[str, float]] = {}
    for task in progress_bar(tasks, desc="bench sim"):
        spec = load_task(task)
        cameras = [f"{k} {f.shape[1]}x{f.shape[0]}" for k, f in spec.features.items() if f.kind == "image"]
        rendered = steps_per_second(task, True, steps, seed)
        results[task] = {"steps_per_s_render": round(rendered, 1),
                         "steps_per_s_no_render": round(steps_per_second(task, False, steps, seed), 1),
                         "cameras": cameras, "fps": spec.fps, "realtime_factor_render": round(rendered / spec.fps, 1)}
        print(f"{task}: {results[task]['steps_per_s_render']} control steps/s rendering {', '.join(cameras)} "
              f"({results[task]['realtime_factor_render']}x real time at {spec.fps:g} fps), "
              f"{results[task]['steps_per_s_no_render']} without")
    return {"bench": "sim", "steps": steps, "tasks": results, "machine": machine(),
            "mujoco_gl": os.environ.get("MUJOCO_GL", ""), "date": time.strftime("%Y-%m-%d", time.gmtime())}
