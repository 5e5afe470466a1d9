"""`robodiff distill` end to end on a tiny store: the student's run dir and checkpoint through the
one training loop, the checkpoint in eval and deploy at 1 and 2 steps, executor=rtc refused in one
line for a one-step student, exact resume, and bad inputs failing before any step."""

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
from robodiff.errors import ConfigError
from robodiff.features import Feature
from robodiff.policy.checkpoint import load_policy, read_train_state

os.environ.setdefault("MUJOCO_GL", "egl")

# push_block's state and action (2-d pusher positions), so eval and deploy run the student there.
TINY = ["logging.progress=false", "logging.tensorboard=false", "training.batch_size=16", "training.log_every=2"]
NETWORK = ["policy.obs_keys=[state]", "policy.horizon=8", "policy.n_action_steps=4",
           "policy.denoiser.down_dims=[16,32]", "policy.denoiser.diffusion_step_embed_dim=16"]


def pusher_store(path: Path, n_episodes: int = 4, length: int = 24) -> Path:
    rng = np.random.default_rng(0)
    store = EpisodeStore.create(path, {"state": Feature("lowdim", (2,)), "action": Feature("action", (2,))},
                                fps=10, task="push_block")
    for _ in range(n_episodes):
        walk = (250 + np.cumsum(rng.normal(scale=8.0, size=(length, 2)), 0)).astype(np.float32)
        store.append_episode({"state": walk, "action": walk + 5.0})
    return path


def cli(capsys, command: str, *args: str) -> tuple[int, dict, list[str]]:
    code = main([command, *args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err.strip().splitlines()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("teacher")
    store = pusher_store(root / "push.zarr")
    run = root / "teacher"
    assert main(["train", f"dataset={store}", f"run_dir={run}", "training.steps=6", *TINY, *NETWORK]) == 0
    return run


def test_distill_writes_a_student_that_eval_and_deploy_sample_in_one_or_two_steps(teacher, tmp_path, capsys):
    run = tmp_path / "student"
    code, summary, err = cli(capsys, "distill", f"checkpoint={teacher}", f"run_dir={run}", "training.steps=6",
                             "training.checkpoint_every=4", "training.val_every=3", *TINY)
    assert code == 0, err
    # The teacher is pinned to its numbered checkpoint; the student's cost is told against it.
    assert summary["teacher"] == str((teacher / "checkpoints" / "6").resolve()) and summary["teacher_step"] == 6
    assert summary["step_fraction"] == 1.0 and summary["seconds_fraction"] > 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["4", "6", "latest"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]
    assert all(np.isfinite(r.get("loss", r.get("val_loss"))) for r in records)
    meta = json.loads((run / "checkpoints" / "latest" / "policy.json").read_text())
    assert meta["policy"]["noise_scheduler"]["inference_scheduler"] == "consistency"
    assert meta["policy"]["noise_scheduler"]["num_inference_steps"] == 1
    assert meta["policy"]["distillation"] == {"method": "consistency", "teacher": summary["teacher"], "teacher_step": 6,
                                              "grid_steps": 5, "target_decay": 0.95}
    teacher_meta = json.loads((teacher / "checkpoints" / "latest" / "policy.json").read_text())
    assert meta["stats"] == teacher_meta["stats"] and meta["features"] == teacher_meta["features"]
    # One checkpoint format: the student's weights as model.* / ema.*, its target network with
    # the optimizer in train_state.pt.
    tensors = load_file(str(run / "checkpoints" / "latest" / "model.safetensors"))
    assert {k.split(".")[0] for k in tensors} == {"model", "ema"}
    target = read_train_state(run)["objective"]["target"]
    assert target.keys() == {k[len("ema."):] for k in tensors if k.startswith("ema.")}
    # The student moved away from the teacher it started as.
    first = load_policy(teacher).state_dict()
    assert any(not torch.equal(v, first[k]) for k, v in load_policy(run, ema=False).state_dict().items())

    for steps in (1, 2):
        student = load_policy(run, sampling_steps=steps)
        chunk = student.predict_action_chunk({"state": np.full((2, 2), 250.0, np.float32)})
        assert chunk.shape == (8, 2) and np.isfinite(chunk).all()
        assert student.inference_scheduler.timesteps.tolist() == [[80], [80, 40]][steps - 1]

    eval_args = ["task=push_block", f"checkpoint={run}", "episodes=1", "n_videos=0"]
    code, result, err = cli(capsys, "eval", *eval_args, "sampling_steps=2", f"out={tmp_path / 'e2'}")
    assert code == 0 and result["sampling_steps"] == 2 and result["episodes"] == 1, err
    code, result, err = cli(capsys, "eval", *eval_args, "executor=async", "latency_s=0.05", f"out={tmp_path / 'ea'}")
    assert code == 0 and result["inferences"] > 0, err
    # rtc inpaints at a noise level between steps: refused for one step, in one line, before any episode.
    code, result, err = cli(capsys, "eval", *eval_args, "executor=rtc", f"out={tmp_path / 'er'}")
    assert code == 2 and len(err) == 1 and "sampling_steps=2" in err[0] and "executor=rtc needs" in err[0], err
    assert not (tmp_path / "er" / "summary.json").exists()
    code, result, err = cli(capsys, "eval", *eval_args, "executor=rtc", "sampling_steps=2", "latency_s=0.2",
                            f"out={tmp_path / 'er2'}")
    assert code == 0 and result["executor"] == "rtc", err
    code, result, err = cli(capsys, "eval", *eval_args, "executor=ensemble", f"out={tmp_path / 'ee'}")
    assert code == 0 and result["executor"] == "ensemble" and result["inferences"] > 0, err
    code, result, err = cli(capsys, "eval", *eval_args, "sampling_steps=6", f"out={tmp_path / 'e6'}")
    assert code == 2 and len(err) == 1 and "sampling_steps=6 must be in 1..5" in err[0], err

    deploy_args = [f"checkpoint={run}", "robot=push_block", "duration_s=1", "torch_threads=1"]
    code, report, err = cli(capsys, "deploy", *deploy_args, "executor=sync", "sampling_steps=2")
    assert code == 0 and report["steps"] > 0 and report["inferences"] > 0, err
    code, report, err = cli(capsys, "deploy", *deploy_args, "executor=rtc")
    assert code == 2 and len(err) == 1 and "sampling_steps=2" in err[0], err


def test_a_student_of_a_prefix_trained_teacher_runs_rtc_in_one_step(tmp_path, capsys):
    """Its prefix (the actions that run while it infers) is an input, not inpainted: one step serves."""
    teacher = tmp_path / "teacher"
    store = pusher_store(tmp_path / "push.zarr")
    assert main(["train", f"dataset={store}", f"run_dir={teacher}", "training.steps=4", "policy.max_prefix_steps=3",
                 *TINY, *NETWORK]) == 0
    run = tmp_path / "student"
    code, summary, err = cli(capsys, "distill", f"checkpoint={teacher}", f"run_dir={run}", "training.steps=4", *TINY)
    assert code == 0 and np.isfinite(summary["final_loss"]), err
    assert load_policy(run).prefix_conditioned
    code, result, err = cli(capsys, "eval", "task=push_block", f"checkpoint={run}", "episodes=1", "n_videos=0",
                            "executor=rtc", "latency_s=0.2", f"out={tmp_path / 'rtc'}")
    assert code == 0 and result["executor"] == "rtc" and result["inferences"] > 0, err


def test_resumed_distillation_equals_an_uninterrupted_one(teacher, tmp_path, capsys):
    common = [f"checkpoint={teacher}", "training.lr_scheduler=constant_with_warmup", "training.lr_warmup_steps=2",
              "training.val_ratio=0", *TINY]
    straight, part = tmp_path / "straight", tmp_path / "part"
    assert cli(capsys, "distill", *common, f"run_dir={straight}", "training.steps=6")[0] == 0
    assert cli(capsys, "distill", *common, f"run_dir={part}", "training.steps=3")[0] == 0
    code, summary, err = cli(capsys, "distill", f"run_dir={part}", "resume=true", "training.steps=6")
    assert code == 0 and summary["resumed_from"].endswith("latest") and summary["steps"] == 6, err
    a = load_file(str(straight / "checkpoints" / "latest" / "model.safetensors"))
    b = load_file(str(part / "checkpoints" / "latest" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ta, tb = read_train_state(straight)["objective"], read_train_state(part)["objective"]
    assert ta["target_step"] == tb["target_step"] == 6
    assert all(torch.equal(ta["target"][k], tb["target"][k]) for k in ta["target"])
    # A resumed distillation keeps its teacher and settings.
    code = main(["distill", f"run_dir={part}", "resume=true", "training.steps=8", "distill.target_decay=0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'distill.target_decay'" in err[0] and "keeps its teacher" in err[0]


def test_bad_teachers_and_settings_fail_before_training(teacher, tmp_path, capsys):
    store = pusher_store(tmp_path / "push.zarr")
    regression = tmp_path / "regression"
    assert main(["train", f"dataset={store}", f"run_dir={regression}", "policy=regression", "training.steps=2",
                 *TINY, *NETWORK]) == 0
    student = tmp_path / "student"
    assert main(["distill", f"checkpoint={teacher}", f"run_dir={student}", "training.steps=2", *TINY]) == 0
    capsys.readouterr()
    for args, words in (([f"checkpoint={regression}"], "is a 'regression' policy"),
                        ([f"checkpoint={student}"], "already a student"),
                        ([f"checkpoint={tmp_path / 'nope'}"], "nope"),
                        ([], "`checkpoint=` is required"),
                        ([f"checkpoint={teacher}", "method=progressive"], "method 'progressive'"),
                        ([f"checkpoint={teacher}", "distill.sampling_steps=5"], "'distill.sampling_steps' must be >= 1 and <= 4"),
                        ([f"checkpoint={teacher}", "distill.grid_steps=2", "distill.sampling_steps=3"],
                         "distill.grid_steps=2 must be in"),
                        ([f"checkpoint={teacher}", "training.stepz=3"], "training.stepz")):
        never = tmp_path / "never"
        code = main(["distill", f"run_dir={never}", *args, *TINY])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], (args, err)
        assert not never.exists()
    with pytest.raises(ConfigError, match="executor=rtc needs"):
        from robodiff.policy.checkpoint import require_guided_checkpoint

        require_guided_checkpoint(student)
