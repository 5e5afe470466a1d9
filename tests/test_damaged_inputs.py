"""Damaged checkpoints and config files: every command that reads them works correctly or exits
non-zero with one line and no traceback, and leaves the damaged files as they were."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from file_digests import digests
import torch
from safetensors.torch import load_file, save_file

from robodiff.cli import main
from robodiff.data.store import EpisodeStore
from robodiff.features import Feature
from robodiff.sim.tasks import load_task

TINY = ["policy.horizon=8", "policy.n_action_steps=4", "policy.denoiser.down_dims=[16,32]",
        "policy.denoiser.diffusion_step_embed_dim=16", "policy.noise_scheduler.num_inference_steps=2",
        "training.batch_size=8", "logging.progress=false", "logging.tensorboard=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real run (2 checkpoints, optimizer state) of a state policy in push_block's units."""
    root = tmp_path_factory.mktemp("trained")
    store = EpisodeStore.create(root / "demos.zarr", {"state": Feature("lowdim", (2,)),
                                                      "action": Feature("action", (2,))}, fps=10, task="push_block")
    rng = np.random.default_rng(0)
    for _ in range(4):
        walk = np.cumsum(rng.normal(0, 5, (20, 2)), 0).astype(np.float32) + 256
        store.append_episode({"state": walk, "action": walk + 3})
    store.close()
    assert main(["train", f"dataset={root / 'demos.zarr'}", f"run_dir={root / 'run'}", "training.steps=4",
                 "training.checkpoint_every=2", *TINY]) == 0
    return root / "run"


def _latest(run: Path) -> Path:
    return run / "checkpoints" / "latest"


def intact(run):
    pass


def no_weights(run):
    (_latest(run) / "model.safetensors").unlink()


def truncated_weights(run):
    path = _latest(run) / "model.safetensors"
    path.write_bytes(path.read_bytes()[:300])


def weights_of_another_shape(run):
    path = _latest(run) / "model.safetensors"
    tensors = load_file(str(path))
    name = next(k for k, v in tensors.items() if v.ndim == 3)
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, *tensors[name].shape[1:])
    save_file(tensors, str(path))


def meta_not_json(run):
    (_latest(run) / "policy.json").write_text("{ this is not json")


def meta_binary(run):
    (_latest(run) / "policy.json").write_bytes(bytes(range(256)))


def meta_a_list(run):
    (_latest(run) / "policy.json").write_text("[1, 2, 3]")


def _edit_meta(run, change):
    path = _latest(run) / "policy.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def meta_without_features(run):
    _edit_meta(run, lambda m: m.pop("features"))


def meta_malformed_features(run):
    _edit_meta(run, lambda m: m["features"].update(state={"kind": "bogus", "shape": "x"}))


def meta_bad_policy_value(run):
    _edit_meta(run, lambda m: m["policy"].update(horizon=-3))


def meta_unknown_policy(run):
    _edit_meta(run, lambda m: m["policy"].update(name="nope"))


def no_train_state(run):
    (_latest(run) / "train_state.pt").unlink()


def garbage_train_state(run):
    (_latest(run) / "train_state.pt").write_bytes(b"\x00garbage" * 10)


def garbage_run_config(run):
    (run / "config.yaml").write_bytes(b"\x89\x00\xff binary \x00")


COMMANDS = ("eval", "deploy", "bench_latency", "resume")
# damage -> the commands that must still work (what they read is intact)
CASES = {
    intact: set(COMMANDS),
    no_weights: set(),
    truncated_weights: set(),
    weights_of_another_shape: set(),
    meta_not_json: set(),
    meta_binary: set(),
    meta_a_list: set(),
    meta_without_features: set(),
    meta_malformed_features: set(),
    meta_bad_policy_value: set(),
    meta_unknown_policy: set(),
    no_train_state: {"eval", "deploy", "bench_latency"},
    garbage_train_state: {"eval", "deploy", "bench_latency"},
    garbage_run_config: {"eval", "deploy", "bench_latency"},
}


def argv(command: str, run: Path, work: Path) -> list[str]:
    return {
        "eval": ["eval", "task=push_block", f"checkpoint={run}", "episodes=1", "n_videos=0", f"out={work / 'e'}"],
        "deploy": ["deploy", f"checkpoint={run}", "robot=push_block", "executor=sync", "duration_s=0.3"],
        "bench_latency": ["bench", "latency", f"checkpoint={run}", "task=push_block", "episodes=1", "n_envs=1",
                          "latencies=[0]", "executors=[sync]", f"out={work / 'b'}"],
        "resume": ["train", f"run_dir={run}", "resume=true", "training.steps=6"],
    }[command]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", list(CASES), ids=lambda f: f.__name__)
def test_command_on_damaged_checkpoint(damage, command, trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    damage(run)
    checkpoints = run / "checkpoints"
    before = digests(checkpoints)
    code = main(argv(command, run, tmp_path))  # an exception escaping here is a traceback
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    if command in CASES[damage]:
        assert code == 0, err
    else:
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("robodiff "), err
        assert "error:" in lines[0]
    if command != "resume" or code != 0:
        assert digests(checkpoints) == before


# ------------------------------------------------------------------------------ config files
def _task_with(tmp_path: Path, edit) -> Path:
    src = load_task("push_block").path
    original = src.read_text().replace("scene: push_block.xml", f"scene: {src.parent / 'push_block.xml'}")
    text = edit(original)
    assert text != original, "the edit did not apply"
    path = tmp_path / "my_task.yaml"
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return path


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.replace("  radius: 25.0", "  radiuss: 25.0"), "unknown key 'success.radiuss'"),
    (lambda t: t.replace("  speed: 45.0", "  speed: fast"), "'expert.speed' must be a positive number"),
    (lambda t: t.replace("  agent_x: [60.0, 452.0]", "  agent_x: [452.0, 60.0]"), "'reset.agent_x' must be [low, high]"),
    (lambda t: re.sub(r"score:\n  scale: .*\n", "", t), "missing key 'score'"),
    (lambda t: t.replace("kind: lowdim, shape: [2]", "kind: lowdim, shape: two"), "feature 'state'"),
    (lambda t: t.replace("kind: image,", "kind: picture,"), "feature kind 'picture'"),
    (lambda t: b"\x00\x01\xff\xfe binary", "not a text file"),
    (lambda t: t + "\n  : : :\n[", "is not valid YAML"),
])
@pytest.mark.parametrize("command", ["eval", "collect", "train"])
def test_damaged_task_yaml_is_one_line(tmp_path, capsys, edit, words, command):
    task = _task_with(tmp_path, edit)
    args = {"eval": ["eval", f"task={task}", "policy=expert", "episodes=1", "n_videos=0"],
            "collect": ["collect", f"task={task}", "episodes=1", f"out={tmp_path / 'c.zarr'}"],
            "train": ["train", f"task={task}", f"dataset={tmp_path}"]}[command]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize("content", [b"\xff\xfe\x00 binary", b"driver: [unclosed", b"- a list\n- not a mapping\n"])
def test_damaged_hardware_yaml_is_one_line(tmp_path, capsys, content, trained):
    path = tmp_path / "arm.yaml"
    path.write_bytes(content)
    code = main(["deploy", f"checkpoint={trained}", f"robot={path}", "executor=sync", "duration_s=0.2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(path) in err[0], err
