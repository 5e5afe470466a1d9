"""`robodiff train`: run dir contents, exact resume, bad configs failing before training, sampler."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robodiff.cli import main
from robodiff.data.store import EpisodeStore
from robodiff.features import Feature
from robodiff.train.sampler import ResumableSampler

# Small enough for seconds on a shared 2-core CPU.
TINY = ["policy.denoiser.down_dims=[32,64]", "policy.denoiser.diffusion_step_embed_dim=32",
        "logging.progress=false", "training.batch_size=16", "training.log_every=4"]


def lowdim_store(path: Path, n_episodes: int = 6, length: int = 30, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    features = {"state": Feature("lowdim", (3,)), "action": Feature("action", (2,)),
                "timestamp": Feature("timestamp", (), "float64")}
    store = EpisodeStore.create(path, features, fps=10, task="toy")
    for _ in range(n_episodes):
        walk = np.cumsum(rng.normal(size=(length, 3)), 0).astype(np.float32)
        store.append_episode({"state": walk, "action": walk[:, :2] * 0.5 + 1.0,
                              "timestamp": np.arange(length) / 10.0})
    return path


def image_store(path: Path, n_episodes: int = 3, length: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    features = {"cam_a": Feature("image", (24, 24, 3), "uint8"), "cam_b": Feature("image", (24, 24, 3), "uint8"),
                "state": Feature("lowdim", (2,)), "action": Feature("action", (2,))}
    store = EpisodeStore.create(path, features, fps=10, task="toy_images")
    for _ in range(n_episodes):
        store.append_episode({"cam_a": rng.integers(0, 255, (length, 24, 24, 3), dtype=np.uint8),
                              "cam_b": rng.integers(0, 255, (length, 24, 24, 3), dtype=np.uint8),
                              "state": rng.normal(size=(length, 2)).astype(np.float32),
                              "action": rng.normal(size=(length, 2)).astype(np.float32)})
    return path


def run_cli(capsys, args: list[str]) -> tuple[int, dict, str]:
    code = main(["train", *args, "--json"])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 else {}), err


def test_train_writes_run_dir(tmp_path, capsys):
    store = lowdim_store(tmp_path / "toy.zarr")
    run_dir = tmp_path / "runs" / "a"
    code, summary, _ = run_cli(capsys, [f"dataset={store}", f"run_dir={run_dir}", "training.steps=12",
                                        "training.checkpoint_every=8", "training.val_every=6", *TINY])
    assert code == 0
    assert summary["steps"] == 12 and summary["run_dir"] == str(run_dir)
    assert np.isfinite(summary["final_loss"]) and summary["samples_per_s"] > 0
    assert Path(summary["checkpoint"]) == run_dir / "checkpoints" / "latest"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["12", "8", "latest"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert [r["step"] for r in logged] == [4, 8, 12]
    assert all({"step", "loss", "lr", "samples_per_s"} <= set(r) for r in logged)
    assert [r["step"] for r in records if "val_loss" in r] == [6, 12]
    # Warm-up: lr grows linearly from 0 towards training.lr over the first 500 steps.
    assert logged[0]["lr"] < logged[1]["lr"] < logged[2]["lr"] < 1e-4
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    saved = (run_dir / "config.yaml").read_text()
    assert "steps: 12" in saved and "down_dims" in saved and "obs_keys" in saved
    meta = json.loads((run_dir / "checkpoints" / "latest" / "policy.json").read_text())
    assert meta["policy"]["obs_keys"] == ["state"] and meta["step"] == 12 and "state" in meta["stats"]
    tensors = load_file(str(run_dir / "checkpoints" / "latest" / "model.safetensors"))
    assert any(k.startswith("model.") for k in tensors) and any(k.startswith("ema.") for k in tensors)
    # The EMA average trails the raw weights after a few steps, so the two sets differ.
    key = next(k for k in tensors if k.startswith("model.denoiser") and k.endswith("weight"))
    assert not torch.equal(tensors[key], tensors["ema." + key[len("model."):]])


def test_resume_equals_uninterrupted(tmp_path, capsys):
    """N steps + resume to 2N gives bit-identical weights to 2N straight (CPU, workers 0; tolerance 0)."""
    store = lowdim_store(tmp_path / "toy.zarr")
    common = [f"dataset={store}", "training.lr_scheduler=constant_with_warmup", "training.lr_warmup_steps=3",
              "training.lr=1e-3", "training.val_every=5", *TINY]
    straight, part = tmp_path / "straight", tmp_path / "part"
    assert run_cli(capsys, [*common, f"run_dir={straight}", "training.steps=14"])[0] == 0
    assert run_cli(capsys, [*common, f"run_dir={part}", "training.steps=7"])[0] == 0
    code, summary, _ = run_cli(capsys, [*common, f"run_dir={part}", "training.steps=14", "resume=true"])
    assert code == 0 and summary["resumed_from"].endswith("latest")
    a = load_file(str(straight / "checkpoints" / "latest" / "model.safetensors"))
    b = load_file(str(part / "checkpoints" / "latest" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # 7 steps of 16 out of 5 episodes' windows cross an epoch boundary, so the sampler position
    # and the epoch change are part of what was restored.
    steps = [json.loads(x)["step"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(8) == 1


def test_image_policy_trains_from_cli(tmp_path, capsys):
    store = image_store(tmp_path / "cams.zarr")
    run_dir = tmp_path / "img"
    code, summary, _ = run_cli(capsys, [f"dataset={store}", f"run_dir={run_dir}", "training.steps=3",
                                        "policy.encoder.backbone=small_cnn", "policy.encoder.crop_shape=[20,20]",
                                        "training.batch_size=4", "logging.progress=false", "training.log_every=1",
                                        "policy.denoiser.down_dims=[16,32]"])
    assert code == 0, summary
    meta = json.loads((run_dir / "checkpoints" / "latest" / "policy.json").read_text())
    assert meta["policy"]["obs_keys"] == ["cam_a", "cam_b", "state"]
    assert meta["features"]["cam_a"]["kind"] == "image"


def _fails_before_training(capsys, tmp_path, args, needle):
    run_dir = tmp_path / "never"
    code = main(["train", f"run_dir={run_dir}", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert needle in err, err
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.parametrize("args, needle", [
    (["training.stepz=3"], "training.stepz"),
    (["policy.horizon=17"], "policy.horizon=17"),
    (["policy.obs_keys=[state,wrist_cam]"], "wrist_cam"),
    (["training.batch_size=0"], "training.batch_size"),
    (["training.lr_scheduler=cosine_wobble"], "training.lr_scheduler"),
])
def test_bad_config_fails_before_training(tmp_path, capsys, args, needle):
    store = lowdim_store(tmp_path / "toy.zarr", n_episodes=2)
    _fails_before_training(capsys, tmp_path, [f"dataset={store}", "training.steps=2", *TINY, *args], needle)


def test_missing_or_unknown_dataset_fails(tmp_path, capsys):
    _fails_before_training(capsys, tmp_path, [f"dataset={tmp_path / 'nope.zarr'}"], "nope.zarr")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not a dataset")
    _fails_before_training(capsys, tmp_path, [f"dataset={tmp_path / 'junk'}"], "junk")
    _fails_before_training(capsys, tmp_path, [], "dataset=")


def test_task_features_must_be_in_dataset(tmp_path, capsys):
    """push_block observes image + state; a low-dim-only store lacks the image."""
    store = lowdim_store(tmp_path / "toy.zarr", n_episodes=2)
    _fails_before_training(capsys, tmp_path, ["task=push_block", f"dataset={store}", *TINY], "'image'")


def test_existing_run_needs_resume(tmp_path, capsys):
    store = lowdim_store(tmp_path / "toy.zarr", n_episodes=2)
    run_dir = tmp_path / "r"
    args = [f"dataset={store}", f"run_dir={run_dir}", "training.steps=2", *TINY]
    assert main(["train", *args]) == 0
    capsys.readouterr()
    assert main(["train", *args]) == 2
    assert "resume=true" in capsys.readouterr().err
    assert main(["train", *args, "resume=true"]) == 2  # already at training.steps
    assert "training.steps" in capsys.readouterr().err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2", "latest"]


def test_foreign_dataset_is_imported_once(tmp_path, capsys):
    """A robomimic HDF5 file is imported next to itself on first use and reused afterwards."""
    h5py = pytest.importorskip("h5py")
    src = tmp_path / "demo.hdf5"
    rng = np.random.default_rng(0)
    with h5py.File(src, "w") as f:
        for k in range(3):
            g = f.create_group(f"data/demo_{k}")
            g.create_dataset("actions", data=rng.normal(size=(20, 2)).astype(np.float32))
            g.create_dataset("obs/robot0_eef_pos", data=rng.normal(size=(20, 3)).astype(np.float32))
            g.attrs["num_samples"] = 20
    args = [f"dataset={src}", "training.steps=2", *TINY]
    assert run_cli(capsys, [*args, f"run_dir={tmp_path / 'r1'}"])[0] == 0
    imported = tmp_path / "demo.hdf5.robodiff.zarr"
    assert EpisodeStore.open(imported).n_episodes == 3
    stamp = os.stat(imported / "meta" / "episode_ends" / ".zarray").st_mtime_ns
    assert run_cli(capsys, [*args, f"run_dir={tmp_path / 'r2'}"])[0] == 0
    assert os.stat(imported / "meta" / "episode_ends" / ".zarray").st_mtime_ns == stamp


def test_sampler_shards_cover_each_epoch_and_resume_mid_epoch():
    n, world = 23, 3
    shards = [list(ResumableSampler(n, r, world, seed=5)) for r in range(world)]
    assert all(len(s) == 8 for s in shards)
    assert set().union(*shards) == set(range(n))
    again = ResumableSampler(n, 1, world, seed=5)
    again.set_position(0, 3)
    assert list(again) == shards[1][3:] and len(again) == 5
    later = ResumableSampler(n, 1, world, seed=5)
    later.set_position(1)
    assert list(later) != shards[1]  # a new permutation every epoch


def test_non_finite_loss_stops_before_a_bad_checkpoint(tmp_path, capsys, monkeypatch):
    from robodiff.policy.diffusion import DiffusionPolicy

    store = lowdim_store(tmp_path / "toy.zarr")
    real = DiffusionPolicy.compute_loss
    calls = []

    def nan_from_step_6(self, batch):
        calls.append(1)
        loss = real(self, batch)
        return loss * float("nan") if len(calls) >= 6 else loss

    monkeypatch.setattr(DiffusionPolicy, "compute_loss", nan_from_step_6)
    run_dir = tmp_path / "run"
    code = main(["train", f"dataset={store}", f"run_dir={run_dir}", "training.steps=12",
                 "training.checkpoint_every=4", "training.val_every=100", *TINY, "--json"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.strip().splitlines() == [
        f"robodiff train: error: training stopped at step 6: the loss is nan; the last checkpoint, "
        f"{run_dir / 'checkpoints' / '4'}, is from step 4 (lower training.lr, or check the data with "
        f"`robodiff dataset validate`)"]
    assert json.loads(out.strip().splitlines()[-1])["error"].startswith("training stopped at step 6")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["4", "latest"]
    assert json.loads((run_dir / "checkpoints" / "latest" / "policy.json").read_text())["step"] == 4


def test_json_summary_is_strict_json(tmp_path, capsys):
    store = lowdim_store(tmp_path / "toy.zarr")
    code, summary, _ = run_cli(capsys, [f"dataset={store}", f"run_dir={tmp_path / 'r'}", "training.steps=2",
                                        "training.val_ratio=0", *TINY])
    assert code == 0 and summary["val_loss"] is None
    from robodiff import jsonio

    assert jsonio.dumps({"a": float("nan"), "b": [float("inf"), 1.5], "c": np.float32(2)}) == \
        '{"a": null, "b": [null, 1.5], "c": 2.0}'


def test_resume_keeps_the_recorded_config_and_refuses_changes(tmp_path, capsys):
    store = lowdim_store(tmp_path / "toy.zarr")
    run_dir = tmp_path / "run"
    first = [f"dataset={store}", f"run_dir={run_dir}", "training.steps=4", "training.checkpoint_every=2",
             "training.log_every=2", *TINY[:3], "training.batch_size=8"]
    assert run_cli(capsys, first)[0] == 0
    # Only training.steps given again: everything else (checkpoint_every=2, batch 8, the network) stays.
    code, summary, _ = run_cli(capsys, [f"run_dir={run_dir}", "resume=true", "training.steps=6"])
    assert code == 0 and summary["steps"] == 6 and summary["batch_size"] == 8
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2", "4", "6", "latest"]
    saved = (run_dir / "config.yaml").read_text()
    assert "steps: 6" in saved and "checkpoint_every: 2" in saved and "batch_size: 8" in saved
    for change, key in ((["policy.denoiser.down_dims=[16,32]"], "policy.denoiser.down_dims"),
                        (["task=push_block"], "task"), (["policy=regression"], "policy")):
        code = main(["train", f"run_dir={run_dir}", "resume=true", "training.steps=8", *change])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and f"config key '{key}'" in err[0] and "keeps its task" in err[0], err
    other = lowdim_store(tmp_path / "other.zarr")
    with EpisodeStore.open(other) as s:
        assert s.features["state"].shape == (3,)
    wide = tmp_path / "wide.zarr"
    ws = EpisodeStore.create(wide, {"state": Feature("lowdim", (4,)), "action": Feature("action", (2,)),
                                    "timestamp": Feature("timestamp", (), "float64")}, fps=10)
    ws.append_episode({"state": np.zeros((30, 4), np.float32), "action": np.zeros((30, 2), np.float32),
                       "timestamp": np.arange(30) / 10})
    ws.close()
    code = main(["train", f"run_dir={run_dir}", "resume=true", "training.steps=8", f"dataset={wide}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "feature 'state'" in err[0] and "keeps its features" in err[0], err
    assert main(["train", f"run_dir={run_dir}", "resume=true", "training.steps=8", f"dataset={other}"]) == 0


def test_ctrl_c_saves_the_step_reached(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    store = lowdim_store(tmp_path / "toy.zarr")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "robodiff", "train", f"dataset={store}", f"run_dir={run_dir}",
                             "training.steps=1000000", *TINY, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["interrupted"] is True and summary["steps"] >= 8
    assert (run_dir / "checkpoints" / str(summary["steps"])).is_dir()
    assert json.loads((run_dir / "checkpoints" / "latest" / "policy.json").read_text())["step"] == summary["steps"]
    assert f"continue with `robodiff train run_dir={run_dir} resume=true`" in err and "Traceback" not in err


def test_rollouts_that_crash_warn_and_training_goes_on(tmp_path, capsys):
    from robodiff.commands.train import load_config
    from robodiff.train.trainer import train

    store = lowdim_store(tmp_path / "toy.zarr")
    cfg = load_config([f"dataset={store}", f"run_dir={tmp_path / 'run'}", "training.steps=8",
                       "eval.every_steps=4", *TINY])
    outs = []

    def crashing(policy, out, device):
        outs.append(out)
        raise RuntimeError("A process in the process pool was terminated abruptly\nwhile the future was running")

    summary = train(cfg, rollout=crashing)
    err = capsys.readouterr().err
    assert summary["steps"] == 8 and len(outs) == 2
    assert "warning: the rollouts at step 4 failed (RuntimeError: A process in the process pool" in err
    assert "training goes on" in err and "Traceback" not in err
    assert summary["best_checkpoint"] is None and (tmp_path / "run" / "checkpoints" / "latest").is_dir()
