"""Checkpoints: fresh-process reload gives the same actions, `latest` survives crashes while saving,
loading never unpickles objects, bad paths fail with one line."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robodiff.errors import UserError
from robodiff.features import Feature, features_to_dict
from robodiff.policy.factory import build_policy
from robodiff.policy import checkpoint as ck
from robodiff.train.rng import capture_rng, restore_rng

FEATURES = {"cam": Feature("image", (20, 20, 3), "uint8"), "state": Feature("lowdim", (3,)),
            "action": Feature("action", (2,))}
STATS = {k: {"min": [-1.0] * n, "max": [2.0] * n, "mean": [0.5] * n, "std": [1.0] * n}
         for k, n in (("state", 3), ("action", 2))}


def small_policy(seed: int = 0) -> torch.nn.Module:
    from robodiff.config import compose, to_dict

    cfg = to_dict(compose("train", ["policy.encoder.backbone=small_cnn", "policy.encoder.crop_shape=[16,16]",
                                    "policy.denoiser.down_dims=[16,32]", "policy.denoiser.diffusion_step_embed_dim=16"]))
    torch.manual_seed(seed)
    return build_policy(cfg["policy"], FEATURES, STATS)


def save(run_dir: Path, step: int, policy: torch.nn.Module) -> Path:
    meta = {"policy": policy.policy_cfg, "features": features_to_dict(FEATURES), "task": "toy", "stats": STATS}
    ema = small_policy(seed=step + 1).state_dict()  # stands in for the EMA weights: different values
    return ck.save_checkpoint(run_dir, step, policy.state_dict(), ema, meta,
                              {"step": step, "rng": [capture_rng()]})


LOAD_AND_ACT = """
import sys, numpy as np, torch
from robodiff.policy.checkpoint import load_policy
policy = load_policy(sys.argv[1], ema=False)
obs = dict(np.load(sys.argv[2]))
out = policy.predict_action({k: torch.as_tensor(v) for k, v in obs.items()},
                            generator=torch.Generator().manual_seed(7))
np.save(sys.argv[3], out.numpy())
"""


def test_fresh_process_reproduces_actions(tmp_path):
    policy = small_policy().eval()
    ckpt = save(tmp_path / "run", 5, policy)
    rng = np.random.default_rng(0)
    obs = {"cam": rng.integers(0, 255, (3, 2, 20, 20, 3), dtype=np.uint8),
           "state": rng.normal(size=(3, 2, 3)).astype(np.float32)}
    np.savez(tmp_path / "obs.npz", **obs)
    with torch.no_grad():
        expected = policy.predict_action({k: torch.as_tensor(v) for k, v in obs.items()},
                                         generator=torch.Generator().manual_seed(7)).numpy()
    for path in (tmp_path / "run", ckpt):  # a run dir or a checkpoint dir
        subprocess.run([sys.executable, "-c", LOAD_AND_ACT, str(path), str(tmp_path / "obs.npz"),
                        str(tmp_path / "out.npy")], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
    assert expected.shape == (3, 16, 2)


def test_ema_weights_load_by_default(tmp_path):
    policy = small_policy()
    save(tmp_path / "run", 3, policy)
    ema_expected = small_policy(seed=4).state_dict()
    loaded = ck.load_policy(tmp_path / "run")
    assert not loaded.training
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ema_expected[k]), k
    raw = ck.load_policy(tmp_path / "run", ema=False).state_dict()
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in raw.items())
    assert ck.read_policy_meta(tmp_path / "run")["step"] == 3


def test_crash_while_writing_keeps_previous_latest(tmp_path, monkeypatch):
    policy = small_policy()
    save(tmp_path, 10, policy)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing weights")

    monkeypatch.setattr(ck, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 20, policy)
    monkeypatch.undo()
    assert ck.resolve_checkpoint(tmp_path) == tmp_path / "checkpoints" / "latest"
    assert ck.read_policy_meta(tmp_path)["step"] == 10
    save(tmp_path, 30, policy)  # the next save cleans the half-written temp dir
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10", "30", "latest"]
    assert ck.read_policy_meta(tmp_path)["step"] == 30


def test_crash_between_latest_renames_falls_back_to_newest_step(tmp_path, monkeypatch):
    policy = small_policy()
    save(tmp_path, 10, policy)
    real_rename = os.rename

    def crash_on_new_latest(src, dst):
        if Path(dst).name == "latest":
            raise KeyboardInterrupt("killed between renaming the old latest away and the new one in")
        real_rename(src, dst)

    monkeypatch.setattr(ck.os, "rename", crash_on_new_latest)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 20, policy)
    monkeypatch.undo()
    assert not (tmp_path / "checkpoints" / "latest").exists()
    assert ck.resolve_checkpoint(tmp_path) == tmp_path / "checkpoints" / "20"
    assert ck.read_policy_meta(tmp_path)["step"] == 20
    ck.load_policy(tmp_path)


def test_train_state_never_unpickles_objects(tmp_path):
    policy = small_policy()
    ckpt = save(tmp_path, 1, policy)
    state = ck.read_train_state(ckpt)
    assert state["step"] == 1
    torch.save({"step": 1, "payload": Path("/etc/passwd")}, ckpt / ck.TRAIN_STATE)  # an arbitrary object
    with pytest.raises(UserError, match="train_state.pt: unreadable"):
        ck.read_train_state(ckpt)


def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng()
    draws = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn()) == draws


def test_bad_paths_fail_with_one_line(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint"):
        ck.load_policy(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a checkpoint"):
        ck.read_policy_meta(tmp_path / "empty")
    ckpt = save(tmp_path / "run", 2, small_policy())
    (ckpt / ck.META).unlink()
    with pytest.raises(UserError, match="missing policy.json") as info:
        ck.load_policy(ckpt)
    assert "\n" not in str(info.value)
    (ckpt / ck.META).write_text(json.dumps({"policy": {"name": "diffusion_unet"}}))
    with pytest.raises(UserError, match="missing or malformed 'features'"):
        ck.load_policy(ckpt)
