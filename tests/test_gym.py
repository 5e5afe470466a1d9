"""Gymnasium: our tasks as `robodiff/<task>`, and `kind: gym` task YAMLs wrapping a gym env."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np
import pytest
import yaml

import robodiff.sim.gym_envs  # noqa: F401  (registers robodiff/<task>)
from robodiff.errors import UserError
from robodiff.sim.experts import make_expert
from robodiff.sim.gym_tasks import GymTaskRobot
from robodiff.sim.outcome import TaskOutcome
from robodiff.sim.env import task_robot
from robodiff.config import compose
from robodiff.eval import evaluate
from robodiff.sim.tasks import load_task


def test_every_task_is_registered_with_spaces():
    assert {"robodiff/push_t", "robodiff/push_block"} <= set(gym.registry)
    env = gym.make("robodiff/push_t")
    assert isinstance(env.observation_space, gym.spaces.Dict)
    assert env.observation_space["image"].shape == (96, 96, 3)
    assert env.observation_space["state"].shape == (5,)
    assert env.action_space.shape == (2,) and env.action_space.high[0] == 512
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["timestamp"] == 0.0
    env.close()


def test_gym_seeding_and_termination_on_success():
    env = gym.make("robodiff/push_block", render_mode="rgb_array")
    first, _ = env.reset(seed=4)
    again, _ = env.reset(seed=4)
    np.testing.assert_array_equal(first["image"], again["image"])
    expert = make_expert("push_block", seed=0)
    expert.reset()
    obs, sim = again, env.unwrapped.sim
    for step in range(100):
        obs, reward, terminated, truncated, info = env.step(expert.act(obs, sim))
        if terminated or truncated:
            break
    assert terminated and not truncated and info["is_success"] and reward == 1.0
    assert env.render().shape == (256, 256, 3)
    env.close()


def _gym_task(tmp_path, mapping):
    path = tmp_path / "wrapped.yaml"
    path.write_text(yaml.safe_dump({
        "name": "wrapped_push_block", "kind": "gym", "gym_id": "robodiff/push_block",
        "fps": 10, "max_steps": 20, "observation_map": mapping, "action_key": "action",
    }))
    return path


def test_gym_kind_task_maps_observations(tmp_path):
    spec = load_task(str(_gym_task(tmp_path, {"image": "image", "state": "agent"})))
    assert spec.kind == "gym" and spec.observation_keys == ["image", "agent"]
    assert spec.features["agent"].shape == (2,) and spec.features["action"].kind == "action"
    robot = task_robot(spec)
    assert isinstance(robot, GymTaskRobot) and robot.action_features["action"].shape == (2,)
    with robot:
        outcome = TaskOutcome(robot, spec.max_steps, spec.fps)
        outcome.reset(1)
        obs = robot.get_observation()
        assert set(obs) == {"image", "agent", "timestamp"} and obs["image"].std() > 10
        for _ in range(20):
            robot.send_action({"action": np.array([256.0, 256.0])})
            result = outcome()
        assert result["done"] and robot.get_observation()["timestamp"] == pytest.approx(2.0)
        assert 0.0 <= result["score"] <= 1.0
        assert robot.render_frame(128).shape == (128, 128, 3)
    # eval runs a gym task through the same episode loop as any other
    summary = evaluate(str(_gym_task(tmp_path, {"image": "image", "state": "agent"})),
                       compose("eval", []).safety, policy_name="random", episodes=2, seed=3,
                       n_videos=1, video_size=64, out=tmp_path / "eval")
    assert summary["episodes"] == 2 and summary["mean_length"] == 20 and len(summary["videos"]) == 1


def test_gym_kind_task_errors_name_the_key(tmp_path):
    with pytest.raises(UserError, match="observation_map key 'pixels'.*has: image, state"):
        load_task(str(_gym_task(tmp_path, {"pixels": "image"})))
    path = tmp_path / "wrapped.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["gym_id"] = "NoSuchEnv-v0"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="gym_id 'NoSuchEnv-v0'"):
        load_task(str(path))
