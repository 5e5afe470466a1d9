"""`robodiff collect`: real MuJoCo episodes into a real Zarr store on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robodiff.cli import main
from robodiff.data.store import EpisodeStore
from robodiff.errors import StoreError
from robodiff.features import Feature
from robodiff.hal import teleop as teleop_module
from robodiff.hal.base import Teleop
from robodiff.commands.collect import CollectConfig, collect_with
from robodiff.config import compose, validate
from robodiff.sim.tasks import load_task


def collect(task, **kw):
    """`robodiff collect` as the command line composes it."""
    return collect_with(validate(compose("collect", [f"task={task}", *(f"{k}={v}" for k, v in kw.items())]),
                                 CollectConfig))


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    payload = json.loads(captured.out.strip().splitlines()[-1]) if code == 0 and "--json" in argv else None
    return code, payload, captured.err


class ScriptedTeleop(Teleop):
    """Commands far outside the table, so the robot must clamp; can simulate Ctrl-C."""

    name = "scripted"

    def __init__(self, robot, action_key, interrupt_at: tuple[int, int] | None = None):
        super().__init__()
        self.feature, self.requested, self.interrupt_at = robot.action_features[action_key], [], interrupt_at
        self.episode = -1

    @property
    def action_features(self):
        return {"action": self.feature}

    def _connect(self):
        pass

    def _disconnect(self):
        pass

    def reset(self, seed=None):
        self.episode += 1
        self.step = 0
        self._rng = np.random.default_rng(seed)

    def _get_action(self, observation):
        if self.interrupt_at == (self.episode, self.step):
            raise KeyboardInterrupt
        self.step += 1
        action = self._rng.uniform(-2000.0, 2000.0, size=self.feature.shape).astype(np.float32)
        self.requested.append(action)
        return {"action": action}


def test_expert_collect_writes_a_store_that_validates(tmp_path, capsys):
    out = tmp_path / "demos.zarr"
    code, result, err = run_cli(["collect", "task=push_block", "teleop=expert", "episodes=2",
                                 f"out={out}", "seed=5", "--json"], capsys)
    assert code == 0, err
    assert result["episodes"] == 2 and result["out"] == str(out)
    assert 0 < result["success_rate"] <= 1 and result["attempts"] >= 2
    store = EpisodeStore.open(out)
    assert store.n_episodes == 2 and store.n_frames == result["frames"]
    assert store.task == "push_block" and store.fps > 0
    assert set(store.features) == set(load_task("push_block").features)
    assert store.features["timestamp"].kind == "timestamp"
    for k in range(store.n_episodes):
        ep = store.read_episode(k)
        assert np.all(np.diff(ep["timestamp"]) > 0)
        images = [key for key, f in store.features.items() if f.kind == "image"]
        for key in images:
            assert ep[key].dtype == np.uint8 and ep[key].std() > 1.0
    assert store.uncommitted_tail() == {}
    code, _, err = run_cli(["dataset", "validate", str(out)], capsys)
    assert code == 0, err

    # Appending with the same features: the earlier episodes stay, the new one follows them.
    first = store.read_episode(0)
    code, result, err = run_cli(["collect", "task=push_block", "episodes=1", f"out={out}", "seed=50", "--json"],
                                capsys)
    assert code == 0, err
    store = EpisodeStore.open(out)
    assert store.n_episodes == 3 and result["store_episodes"] == 3
    np.testing.assert_array_equal(store.read_episode(0)["action"], first["action"])


def test_recorded_action_is_the_clamped_action_the_robot_sent(tmp_path, monkeypatch):
    made = []

    def factory(robot, action_key):
        made.append(ScriptedTeleop(robot, action_key))
        return made[-1]

    monkeypatch.setitem(teleop_module.TELEOPS, "scripted", factory)
    out = tmp_path / "clamped.zarr"
    result = collect("push_block", teleop="scripted", episodes=1, out=out, keep_failed=True)
    store = EpisodeStore.open(out)
    recorded = store.read_episode(0)["action"]
    requested = np.stack(made[0].requested)
    assert result["frames"] == len(recorded) == len(requested)
    assert not np.allclose(recorded, requested)  # the teleop asked for points off the table ...
    low, high = recorded.min(axis=0), recorded.max(axis=0)
    np.testing.assert_allclose(recorded, np.clip(requested, low, high), atol=1e-4)  # ... the robot clamped them


def test_interrupt_mid_episode_loses_only_that_episode(tmp_path, monkeypatch):
    monkeypatch.setitem(teleop_module.TELEOPS, "scripted",
                        lambda robot, action_key: ScriptedTeleop(robot, action_key, interrupt_at=(1, 7)))
    out = tmp_path / "interrupted.zarr"
    result = collect("push_block", teleop="scripted", episodes=3, out=out, keep_failed=True)
    assert result["interrupted"] and result["episodes"] == 1
    store = EpisodeStore.open(out)
    assert store.n_episodes == 1 and store.uncommitted_tail() == {}
    assert store.n_frames == result["frames"]


def test_appending_to_a_store_with_other_features_names_the_key(tmp_path):
    out = tmp_path / "other.zarr"
    EpisodeStore.create(out, {"state": Feature("lowdim", (7,)), "action": Feature("action", (7,))}, fps=10)
    with pytest.raises(StoreError, match="feature '"):
        collect("push_block", teleop="expert", episodes=1, out=out)


@pytest.mark.parametrize("argv, needle", [
    (["task=no_such_task", "out=x.zarr"], "no_such_task"),
    (["task=push_block", "out=x.zarr", "episodez=3"], "episodez"),
    (["task=push_block", "out=x.zarr", "teleop=spacemouse"], "moves an arm's tool"),
    (["task=push_block", "out=x.zarr", "teleop=keyboard"], "not a TTY"),
    (["task=push_block"], "out="),
])
def test_bad_inputs_are_one_line_errors(argv, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["collect", *argv], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.zarr").exists()


def test_ctrl_c_leaves_a_valid_store(tmp_path, terminal_sigint):
    import signal
    import subprocess
    import sys
    import time

    from robodiff.data.integrity import validate_store

    out = tmp_path / "demos.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "robodiff", "collect", "task=push_block", "teleop=expert",
                             "episodes=50", f"out={out}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=terminal_sigint)
    ends = out / "meta" / "episode_ends"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (ends / "0").exists() and EpisodeStore.open(out).n_episodes >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # most likely while an episode runs, possibly while one commits
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    report = validate_store(out)
    assert report["valid"] and report["episodes"] >= 2, report


def test_noise_injection_keeps_the_intended_action_as_the_label(tmp_path, capsys):
    out = tmp_path / "dart.zarr"
    code = main(["collect", "task=push_block", "episodes=2", f"out={out}", "noise.scale=0.02",
                 "noise.correlation=0.5", "keep_failed=true", "--json"])
    assert code == 0
    with EpisodeStore.open(out) as store:
        assert store.attrs["action_label"] == "expert_action"
        assert store.features["expert_action"] == store.features["action"]
        sent, intended = store.read_slice("action", 0, store.n_frames), store.read_slice("expert_action", 0, store.n_frames)
    gap = np.abs(sent - intended)
    # ~10 px std (2 % of the 512 px table): the robot was pushed off what the expert commanded ...
    assert 3.0 < gap.mean() < 20.0
    # ... and the expert's own commands stayed smooth: it corrected, it did not copy the noise.
    assert np.abs(np.diff(intended, axis=0)).mean() < np.abs(np.diff(sent, axis=0)).mean()
    # Appending without noise would mix labels: refused in one line.
    capsys.readouterr()
    assert main(["collect", "task=push_block", "episodes=1", f"out={out}"]) == 2
    assert "feature 'expert_action'" in capsys.readouterr().err


def test_training_learns_the_label_of_a_perturbed_store(tmp_path, capsys):
    out = tmp_path / "dart.zarr"
    assert main(["collect", "task=push_block", "episodes=2", f"out={out}", "noise.scale=0.02", "keep_failed=true"]) == 0
    run = tmp_path / "run"
    assert main(["train", "task=push_block", f"dataset={out}", f"run_dir={run}", "training.steps=2",
                 "training.batch_size=4", "policy.encoder.backbone=small_cnn", "policy.encoder.crop_shape=null",
                 "policy.denoiser.down_dims=[16,32]", "logging.progress=false"]) == 0
    meta = json.loads((run / "checkpoints" / "latest" / "policy.json").read_text())
    assert meta["action_label"] == "expert_action" and "expert_action" not in meta["features"]
    with EpisodeStore.open(out) as store:
        label = store.read_slice("expert_action", 0, store.n_frames)
    assert np.allclose(meta["stats"]["action"]["max"], label.max(0), rtol=1e-5)
