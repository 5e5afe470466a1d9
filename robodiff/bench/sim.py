"""Simulation speed: control steps per second for each MuJoCo task, with every camera the task
declares rendered (at its feature size) and without rendering, and how many times faster than
real time that is at the task's control rate.

Keys: `steps=N` (timed control steps per measurement, default 500), `tasks=[a,b]` (default: every
MuJoCo task). Random actions within the robot's limits; episodes are reset when they end (reset
time is included, as in evaluation).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robodiff.errors import UserError
from robodiff.hal.hardware import read_yaml
from robodiff.paths import asset_dir
from robodiff.sim.env import SimEnv
from robodiff.sim.tasks import load_task

KEYS = ("steps", "tasks")


def _parse(overrides: list[str]) -> dict[str, str]:
    out = {}
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in KEYS:
            raise UserError(f"unknown key '{key}' for `robodiff bench sim` (keys: {', '.join(KEYS)})")
        out[key] = value
    return out


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
    opts = _parse(overrides)
    try:
        steps = int(opts.get("steps", 500))
    except ValueError:
        raise UserError(f"steps={opts['steps']} is not an integer") from None
    if "tasks" in opts:
        tasks = [t for t in opts["tasks"].strip("[]").split(",") if t]
    else:
        tasks = [p.stem for p in sorted(asset_dir("tasks").glob("*.yaml"))
                 if read_yaml(p).get("kind", "mujoco") == "mujoco"]
    results: dict[str, dict[str, float]] = {}
    for task in tqdm(tasks, desc="bench sim", file=sys.stderr):
        spec = load_task(task)
        cameras = [f"{k} {f.shape[1]}x{f.shape[0]}" for k, f in spec.features.items() if f.kind == "image"]
        rendered = steps_per_second(task, True, steps)
        results[task] = {"steps_per_s_render": round(rendered, 1),
                         "steps_per_s_no_render": round(steps_per_second(task, False, steps), 1),
                         "cameras": cameras, "fps": spec.fps, "realtime_factor_render": round(rendered / spec.fps, 1)}
        print(f"{task}: {results[task]['steps_per_s_render']} control steps/s rendering {', '.join(cameras)} "
              f"({results[task]['realtime_factor_render']}x real time at {spec.fps:g} fps), "
              f"{results[task]['steps_per_s_no_render']} without")
    return {"bench": "sim", "steps": steps, "tasks": results, "machine": _machine(),
            "mujoco_gl": os.environ.get("MUJOCO_GL", ""), "date": time.strftime("%Y-%m-%d", time.gmtime())}


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"
