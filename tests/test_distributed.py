"""`torchrun --nproc_per_node=2` on CPU (gloo): ranks stay identical, rank 0 writes one checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from test_train import lowdim_store

from robodiff.policy.checkpoint import load_policy
from robodiff.train.distributed import parameter_digest


def test_torchrun_two_processes_on_cpu(tmp_path):
    store = lowdim_store(tmp_path / "toy.zarr", n_episodes=6)
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "robodiff.cli", "train", f"dataset={store}", f"run_dir={run_dir}", "training.steps=6",
           "training.batch_size=8", "training.log_every=2", "training.lr=1e-3", "training.lr_warmup_steps=0",
           "training.checkpoint_every=100", "policy.denoiser.down_dims=[32,64]",
           "policy.denoiser.diffusion_step_embed_dim=32", "logging.progress=false", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["steps"] == 6
    # sha256 of every parameter on each rank after 6 optimizer steps.
    digests = summary["param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # Exactly one checkpoint (the final one; checkpoint_every is larger than the run), from rank 0.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["6", "latest"]
    assert parameter_digest(load_policy(run_dir, ema=False)) == digests[0]
    state_rngs = torch.load(run_dir / "checkpoints" / "6" / "train_state.pt", weights_only=True)["rng"]
    assert len(state_rngs) == 2 and not (state_rngs[0]["torch"] == state_rngs[1]["torch"]).all()  # per-rank seeds
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [2, 4, 6]  # rank 0 alone logs


def test_ctrl_c_under_torchrun_stops_every_rank_at_one_step(tmp_path):
    import signal
    import time

    store = lowdim_store(tmp_path / "toy.zarr", n_episodes=6)
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "robodiff.cli", "train", f"dataset={store}", f"run_dir={run_dir}", "training.steps=1000000",
           "training.batch_size=8", "training.log_every=2", "training.checkpoint_every=1000000",
           "policy.denoiser.down_dims=[32,64]", "policy.denoiser.diffusion_step_embed_dim=32",
           "logging.progress=false", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 200
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches torchrun and every rank
    out, err = proc.communicate(timeout=200)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["interrupted"] is True and summary["ranks_in_sync"] is True, err[-2000:]
    step = summary["steps"]
    assert step % 2 == 0  # the ranks agreed at a log step
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [str(step), "latest"]
    assert parameter_digest(load_policy(run_dir, ema=False)) == summary["param_digests"][0]
    assert err.count("interrupted at step") == 1  # rank 0 alone prints the hint


def test_torchrun_distils_with_two_processes_on_cpu(tmp_path):
    """The student trains through the same DDP loop: ranks identical, one checkpoint from rank 0."""
    store = lowdim_store(tmp_path / "toy.zarr", n_episodes=6)
    teacher = tmp_path / "teacher"
    network = ["policy.denoiser.down_dims=[16,32]", "policy.denoiser.diffusion_step_embed_dim=16"]
    common = ["training.batch_size=8", "training.log_every=2", "training.checkpoint_every=100", "logging.progress=false",
              "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = subprocess.run([sys.executable, "-m", "robodiff.cli", "train", f"dataset={store}", f"run_dir={teacher}",
                            "training.steps=2", *network, *common], capture_output=True, text=True, env=env, timeout=240)
    assert train.returncode == 0, train.stderr[-3000:]
    run_dir = tmp_path / "student"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "robodiff.cli", "distill", f"checkpoint={teacher}", f"run_dir={run_dir}",
                           "training.steps=4", "training.lr=1e-3", *common],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["steps"] == 4 and summary["teacher_step"] == 2
    digests = summary["param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["4", "latest"]
    assert parameter_digest(load_policy(run_dir, ema=False)) == digests[0]
