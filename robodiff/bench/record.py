"""Recording on hardware, emulated: `robodiff collect` with the leader arm between two bus emulator
processes (follower and leader; the leader's person moves every joint at up to `speed_deg_s`) at
`fps`, with two video-file cameras of `width` x `height` recorded at that size.

Figures: the loop's period (p50/p99/max, overruns), the time to save each episode after it ended,
the process's peak memory (the recorder streams the episode to disk: it must not grow with the
episode), and how far the follower was from the leader: per joint, the 95th percentile of
|follower state - leader action| at the same tick (lag included), after the first second (the
follower first travels, rate-limited, to wherever the leader started). Both arms are calibrated
first by `robodiff hardware calibrate`'s procedure against their emulators (the person on a fast
clock), in a temporary calibration directory.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml
from omegaconf import MISSING

from robodiff.bench import machine
from robodiff.bench.bus import EmulatorProcess
from robodiff.commands.collect import check_robot_features, collect
from robodiff.config import bounded, compose, validate
from robodiff.data.store import EpisodeStore
from robodiff.data.video import write_video
from robodiff.hal import make_robot
from robodiff.hal.emulator.calibrate import calibrate_emulated
from robodiff.hal.hardware import load_hardware
from robodiff.sim.tasks import load_task


@dataclass
class BenchRecordConfig:
    robot: str = MISSING
    duration_s: float = bounded(gt=0)
    episodes: int = bounded(ge=1)
    fps: float = bounded(gt=0)
    width: int = bounded(ge=16)
    height: int = bounded(ge=16)
    cameras: bool = MISSING
    speed_deg_s: float = bounded(gt=0)
    settle_s: float = bounded(ge=0)
    out: Optional[str] = MISSING


SCHEMA = BenchRecordConfig


def load_config(overrides: list[str]) -> Any:
    return validate(compose("bench_record", overrides), BenchRecordConfig)


def camera_video(path: Path, width: int, height: int, fps: float) -> Path:
    """Two seconds of a moving scene with sensor noise (noise is what makes camera frames hard to
    compress, as they are)."""
    rng = np.random.default_rng(0)
    yy, xx = np.indices((height, width))
    frames = []
    for k in range(int(2 * fps)):
        scene = np.stack([(xx + 4 * k) // 3 % 256, (yy + 2 * k) // 2 % 256, (xx + yy) // 4 % 256], -1)
        frames.append(np.clip(scene + rng.normal(0, 3, scene.shape), 0, 255).astype(np.uint8))
    return write_video(path, np.array(frames), fps=fps)


def arm_yaml(path: Path, hardware: Any, tmp: Path, cfg: Any) -> Path:
    """The arm's hardware YAML with its ports and cameras for this run (`robot=path/to/my.yaml`,
    as a user with other cameras writes one)."""
    video = camera_video(tmp / "camera.mp4", cfg.width, cfg.height, cfg.fps)
    raw = dict(hardware.raw, model=str(hardware.model_path), port=str(tmp / "follower"),
               leader={**hardware.raw["leader"], "port": str(tmp / "leader")})
    raw["cameras"] = {name: {**spec, "path": str(video), "width": cfg.width, "height": cfg.height, "fps": cfg.fps}
                      for name, spec in hardware.raw["cameras"].items()} if cfg.cameras else None
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def physical_task(path: Path, robot: str, hardware_joints: tuple[str, ...], cfg: Any) -> Path:
    joints = {"kind": "lowdim", "shape": [6], "dtype": "float32", "units": "degrees", "names": list(hardware_joints)}
    image = {"kind": "image", "shape": [cfg.height, cfg.width, 3], "dtype": "uint8"}
    cameras = {"front": image, "wrist": image} if cfg.cameras else {}
    path.write_text(yaml.safe_dump({
        "name": "bench_record", "kind": "physical", "robot": robot, "fps": cfg.fps,
        "max_steps": int(round(cfg.duration_s * cfg.fps)),
        "features": {**cameras, "state": joints, "action": {**joints, "kind": "action"}}}))
    return path


def run(overrides: list[str], flags: set[str]) -> dict:
    cfg = load_config(overrides)
    hardware = load_hardware(cfg.robot)
    arms = compose("hardware_emulate", []).arms
    previous = os.environ.get("ROBODIFF_CALIBRATION_DIR")
    with tempfile.TemporaryDirectory(prefix="robodiff-bench-record-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["ROBODIFF_CALIBRATION_DIR"] = str(tmp / "calibration")
        try:
            calibrate_emulated(hardware, tmp / "calibrating", str(hardware.raw["id"]),
                               assembly_seed=arms.follower.assembly_seed, voltage_v=arms.follower.voltage)
            calibrate_emulated(hardware, tmp / "calibrating", str(hardware.raw["leader"]["id"]),
                               assembly_seed=arms.leader.assembly_seed, voltage_v=arms.leader.voltage)
            robot_yaml = str(arm_yaml(tmp / "arm.yaml", hardware, tmp, cfg))
            out = Path(cfg.out) if cfg.out else tmp / "recorded.zarr"
            follower = EmulatorProcess(tmp / "follower", f"robot={cfg.robot}")
            leader = EmulatorProcess(tmp / "leader", f"robot={cfg.robot}", "arm=leader", f"speed_deg_s={cfg.speed_deg_s}")
            try:
                robot = make_robot(robot_yaml)
                task = load_task(physical_task(tmp / "task.yaml", robot_yaml, hardware.joints, cfg))
                check_robot_features(task, robot, robot_yaml)
                rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                started = time.perf_counter()
                defaults = compose("collect", [])
                report = collect(task, robot, "leader", int(cfg.episodes), out, 0, True, int(cfg.episodes),
                                 defaults.safety, bool(defaults.realtime_priority))
                wall_s = time.perf_counter() - started
                rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            finally:
                follower.stop()
                leader.stop()
            with EpisodeStore.open(out) as store:
                names = list(store.features["state"].names or range(6))
                settle = int(round(cfg.settle_s * cfg.fps))
                gaps = np.concatenate([np.abs(ep["state"][settle:].astype(np.float64) - ep["action"][settle:])
                                       for ep in store.iter_episodes(["state", "action"])])
        finally:
            if previous is None:
                os.environ.pop("ROBODIFF_CALIBRATION_DIR", None)
            else:
                os.environ["ROBODIFF_CALIBRATION_DIR"] = previous
    p95 = np.percentile(gaps, 95, axis=0)
    result = {"bench": "record", "fps": cfg.fps,
              "cameras": f"2 x {cfg.width}x{cfg.height} (video files)" if cfg.cameras else "none",
              "episodes": report["episodes"], "frames": report["frames"], "duration_s": cfg.duration_s,
              "wall_s": round(wall_s, 1), **{k: v for k, v in report.items() if k.startswith(("period", "overruns"))},
              "save_s_max": report["save_s_max"], "recorder_waits": report["recorder_waits"],
              "peak_rss_mb": round(rss_after, 1), "rss_growth_mb": round(rss_after - rss_before, 1),
              "follower_stale_reads": report["bus_stale_reads"], "leader_speed_deg_s": cfg.speed_deg_s,
              "tracking_p95_deg": {n: round(float(v), 2) for n, v in zip(names, p95)},
              "tracking_p95_deg_max": round(float(p95.max()), 2),
              "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime())}
    print(f"{result['frames']} frames at {cfg.fps:g} Hz: period p50 {result['period_p50_ms']} ms, p99 "
          f"{result['period_p99_ms']} ms, {result['overruns']} overruns; saved in {result['save_s_max']} s; "
          f"peak memory {result['peak_rss_mb']} MB; follower-leader p95 {result['tracking_p95_deg']} deg")
    return result
