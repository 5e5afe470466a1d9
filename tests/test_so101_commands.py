"""The commands on emulated hardware exactly as on real: two bus emulator processes (follower and
leader), `robodiff collect` with the leader arm into a store, and `robodiff deploy` of a policy
trained in simulation for so101_pick_place on the emulated follower (same features and units, the
rate limit on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from robodiff.data.integrity import validate_store
from robodiff.data.store import EpisodeStore
from robodiff.data.video import write_video
from tests.emulated_arm import LEADER_SEED, calibrate_emulated
from tests.test_hardware_cli import read_until

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["task=so101_pick_place", "training.steps=2", "training.batch_size=4", "logging.progress=false",
         "logging.tensorboard=false", "policy.encoder.backbone=small_cnn", "policy.encoder.crop_shape=[88,120]",
         "policy.denoiser.down_dims=[16,32]", "policy.denoiser.diffusion_step_embed_dim=16"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Both arms calibrated (the emulator processes assemble them alike), two camera videos, and
    the environment every child process gets."""
    root = tmp_path_factory.mktemp("so101_commands")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MUJOCO_GL": "egl", "ROBODIFF_CALIBRATION_DIR": str(root / "cal")}
    before = os.environ.get("ROBODIFF_CALIBRATION_DIR")
    os.environ["ROBODIFF_CALIBRATION_DIR"] = env["ROBODIFF_CALIBRATION_DIR"]
    try:
        calibrate_emulated(root / "cal_follower", "so101_follower")
        calibrate_emulated(root / "cal_leader", "so101_leader", assembly_seed=LEADER_SEED, voltage_v=5.0)
    finally:
        if before is None:
            del os.environ["ROBODIFF_CALIBRATION_DIR"]
        else:
            os.environ["ROBODIFF_CALIBRATION_DIR"] = before
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (30, 96, 128, 3), dtype=np.uint8)
    videos = {cam: write_video(root / f"{cam}.mp4", frames, fps=30) for cam in ("front", "wrist")}
    cameras = [f"robot.cameras.{cam}.path={path}" for cam, path in videos.items()]
    return {"root": root, "env": env, "cameras": cameras}


@contextmanager
def emulator(setup, link: Path, *args: str):
    """`robodiff hardware emulate` in its own process, until the block ends."""
    proc = subprocess.Popen([sys.executable, "-m", "robodiff", "hardware", "emulate", f"link={link}", *args],
                            cwd=REPO, env=setup["env"], stderr=subprocess.PIPE, text=True)
    try:
        read_until(proc.stderr, "Ctrl-C stops")
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def robodiff(setup, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robodiff", *args], cwd=REPO, env=setup["env"],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def test_collect_with_the_leader_arm_between_two_emulators(setup, tmp_path):
    task = tmp_path / "short_real.yaml"  # the physical task, 1 s episodes
    task.write_text((REPO / "tasks/so101_pick_place_real.yaml").read_text()
                    .replace("name: so101_pick_place_real", "name: short_real").replace("max_steps: 900", "max_steps: 30"))
    out = tmp_path / "demos.zarr"
    with emulator(setup, tmp_path / "follower"), emulator(setup, tmp_path / "leader", "arm=leader"):
        proc = robodiff(setup, "collect", f"task={task}", "robot=so101", "teleop=leader", "episodes=2", f"out={out}",
                        f"robot.port={tmp_path / 'follower'}", f"robot.leader.port={tmp_path / 'leader'}",
                        *setup["cameras"], "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["episodes"] == 2 and report["success_rate"] is None and report["bus_stale_reads"] == 0
    assert validate_store(out)["valid"]
    with EpisodeStore.open(out) as store:
        assert store.robot == "so101" and store.fps == 30 and store.n_episodes == 2
        # 30 ticks of a real-time clock each; one more than half a period late is skipped, not run
        # late (control/clock.py), so a loaded machine records a frame or two fewer
        assert all(27 <= n <= 30 for n in store.episode_lengths()), list(store.episode_lengths())
        assert store.features["action"].units == "degrees" and store.features["front"].shape == (96, 128, 3)
        ep = store.read_episode(1)
    assert np.all(np.diff(ep["timestamp"]) > 0) and ep["front"].std() > 10
    moved = np.ptp(ep["action"], axis=0)
    assert np.all(moved[:4] > 5), moved  # the person moved the leader; what was sent follows it
    lag = np.abs(ep["state"][5:, :4] - ep["action"][5:, :4])
    assert np.median(lag) < 10, lag.max(axis=0)  # the follower followed (the figure is in benchmarks.md)
    # what was recorded trains for the physical task (no simulator: no rollouts)
    proc = robodiff(setup, "train", f"dataset={out}", f"run_dir={tmp_path / 'run'}",
                    *[f"task={task}" if a.startswith("task=") else a for a in TRAIN])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "checkpoints" / "latest").is_dir()


@pytest.fixture(scope="module")
def sim_policy(setup):
    """A (two-step) policy trained in simulation for so101_pick_place on the scripted expert's demos."""
    root = setup["root"]
    demos = root / "sim.zarr"
    proc = robodiff(setup, "collect", "task=so101_pick_place", "teleop=expert", "episodes=1", "keep_failed=true",
                    "max_attempts=1", f"out={demos}")
    assert proc.returncode == 0, proc.stderr
    proc = robodiff(setup, "train", f"dataset={demos}", f"run_dir={root / 'run'}", *TRAIN)
    assert proc.returncode == 0, proc.stderr
    return root / "run"


def test_a_policy_trained_in_simulation_deploys_on_the_emulated_follower(setup, sim_policy, tmp_path):
    record = tmp_path / "deployed.zarr"
    with emulator(setup, tmp_path / "follower"):
        proc = robodiff(setup, "deploy", f"checkpoint={sim_policy}", "robot=so101", f"robot.port={tmp_path / 'follower'}",
                        *setup["cameras"], "executor=sync", "duration_s=2", f"record={record}", "torch_threads=1",
                        "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rate_limit"] is True and report["steps"] >= 10 and report["bus_stale_reads"] == 0
    with EpisodeStore.open(record) as store:
        assert store.features["state"].units == store.features["action"].units == "degrees"
        ep = store.read_episode(0)
    steps = np.abs(np.diff(ep["action"].astype(np.float64), axis=0))
    # at most limits.max_step_deg per step (the follower's published bound), to the half servo step
    # a goal is rounded to
    assert np.all(steps <= 10.0 + 180 / 4095 + 1e-4) and np.any(steps > 9.9)
    low, high = ep["action"].min(axis=0), ep["action"].max(axis=0)
    assert np.all(low >= [-112, -102, -99, -97, -180, 0]) and np.all(high <= [112, 102, 99, 97, 180, 100])


def test_a_policy_the_follower_cannot_feed_is_refused_in_one_line(setup, sim_policy, tmp_path):
    with emulator(setup, tmp_path / "follower"):
        proc = robodiff(setup, "deploy", f"checkpoint={sim_policy}", "robot=so101", f"robot.port={tmp_path / 'follower'}",
                        "robot.cameras=null", "executor=sync", "duration_s=1")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "reads 'front' that robot 'so101' does not provide" in lines[0]
