"""so101_pick_place: the task YAML, seeded resets inside the stated area, success and score, the
scripted expert (through the IK) and the random floor, the gymnasium id."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np
import pytest
import yaml

import robodiff.sim  # noqa: F401  (registers the task robots and the expert)
import robodiff.sim.gym_envs  # noqa: F401
from robodiff.errors import UserError
from robodiff.hal import make_robot
from robodiff.paths import asset_dir
from robodiff.sim.env import SimEnv, TaskRobot
from robodiff.sim.experts import make_expert
from robodiff.sim.pick_place import yaw_quat
from robodiff.sim.tasks import load_task

TASK = "so101_pick_place"


@pytest.fixture(scope="module")
def env():
    env = SimEnv(TASK, render=False)
    yield env
    env.close()


def test_the_task_states_its_rate_length_and_features():
    spec = load_task(TASK)
    assert spec.fps == 30 and spec.max_steps == 300 and spec.robot == "so101"
    assert spec.features["state"].units == "degrees" and spec.features["action"].units == "degrees"
    assert spec.features["front"].shape == spec.features["wrist"].shape == (96, 128, 3)
    assert spec.policy_inputs == ["front", "wrist", "state"]  # the cube's pose is recorded, not observed
    assert "cube_pose" in spec.observation_keys


def test_an_arm_task_without_units_or_in_unknown_units_is_named(tmp_path):
    cfg = yaml.safe_load((asset_dir("tasks") / f"{TASK}.yaml").read_text())
    cfg["scene"] = str(asset_dir("tasks") / cfg["scene"])
    path = tmp_path / "task.yaml"
    del cfg["features"]["action"]["units"]
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="action feature 'action' needs units \\(robot 'so101' works in "
                                        "degrees or range100\\)"):
        load_task(path)
    cfg["features"]["action"]["units"] = "turns"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="feature 'action' is in units 'turns', which robot 'so101' does not map"):
        load_task(path)


def test_resets_draw_the_cube_in_the_stated_area(env):
    r = env.task.config["reset"]
    poses = []
    for seed in range(20):
        obs = env.reset(seed)
        x, y, z = obs["cube_pose"][:3]
        assert r["cube_x"][0] <= x <= r["cube_x"][1] and r["cube_y"][0] <= y <= r["cube_y"][1]
        assert z == pytest.approx(0.0125)
        assert r["cube_yaw"][0] <= env.logic.cube_yaw(env.data) <= r["cube_yaw"][1]
        poses.append(obs["cube_pose"])
    np.testing.assert_array_equal(env.reset(3)["cube_pose"], poses[3])  # a seed is a reset
    target = env.data.mocap_pos[env.model.body_mocapid[env.model.body("target").id]]
    np.testing.assert_allclose(target[:2], env.task.config["goal"]["center"])
    assert env.model.geom("target").size[0] * 2 == pytest.approx(env.task.config["goal"]["size"])


def _place_cube(env, xy, z=0.0125):
    adr = env.logic._cube
    env.data.qpos[adr:adr + 7] = [*xy, z, *yaw_quat(0.3)]
    env.data.qvel[:] = 0


def test_success_needs_the_cube_resting_inside_the_square(env):
    import mujoco

    env.reset(0)
    center = np.asarray(env.task.config["goal"]["center"])
    _place_cube(env, center + [0.035, -0.03])
    mujoco.mj_forward(env.model, env.data)
    score, success, info = env.logic.evaluate(env.model, env.data)
    assert success and score == 1.0 and info["distance"] == 0.0
    _place_cube(env, center + [0.06, 0.0])  # its centre 2 cm beyond the square's edge
    mujoco.mj_forward(env.model, env.data)
    score, success, info = env.logic.evaluate(env.model, env.data)
    assert not success and info["distance"] == pytest.approx(0.02)
    assert score == pytest.approx(0.5 * (1 - 0.02 / 0.2))  # only the distance part
    _place_cube(env, center, z=0.05)  # above the square, falling
    mujoco.mj_forward(env.model, env.data)
    assert not env.logic.evaluate(env.model, env.data)[1]


def _expert_episode(env, seed, hold_steps=0):
    expert = make_expert(env.task, seed)
    expert.reset()
    obs = env.reset(seed)
    seen = {"grasped": False, "lifted": False, "best": 0.0}
    for _ in range(env.task.max_steps):
        obs, score, success, done, info = env.step(expert.act(obs, env.robot))
        seen["grasped"] |= info["grasped"]
        seen["lifted"] |= info["lifted"]
        seen["best"] = max(seen["best"], score)
        if hold_steps and expert.phase == "carry":
            break
        if done:
            break
    return success, seen, obs


def test_the_expert_picks_and_places_through_the_ik(env):
    for seed in range(4):
        success, seen, _ = _expert_episode(env, seed)
        assert success and seen["grasped"] and seen["lifted"], seed


def test_the_grasp_holds_the_cube_in_the_air(env):
    _, seen, obs = _expert_episode(env, 5, hold_steps=1)
    assert seen["lifted"]
    held = obs["state"].copy()
    for _ in range(60):  # two seconds holding still, lifted
        obs = env.step(held)[0]
    assert obs["cube_pose"][2] > 0.0125 + 0.02
    assert env.logic.jaws_touching(env.data) == env.logic._jaws


def test_random_actions_do_not_succeed(env):
    rng = np.random.default_rng(0)
    low, high = env.robot.action_limits["action"]
    for seed in range(3):
        env.reset(seed)
        for _ in range(env.task.max_steps):
            _, _, success, done, _ = env.step(rng.uniform(low, high))
            assert not success
            if done:
                break


def test_the_simulated_arm_is_reached_through_its_task():
    robot = make_robot(TASK, render=False, seed=0)
    assert isinstance(robot, TaskRobot) and robot.kinematics is not None
    assert robot.action_features["action"].units == "degrees"


def test_gymnasium_id_with_both_cameras():
    env = gym.make(f"robodiff/{TASK}")
    try:
        assert set(env.observation_space.spaces) == {"front", "wrist", "state", "cube_pose"}
        assert env.observation_space["front"].shape == (96, 128, 3)
        assert env.action_space.shape == (6,) and env.action_space.high[5] == pytest.approx(100.0)
        obs, _ = env.reset(seed=0)
        assert obs["wrist"].shape == (96, 128, 3) and obs["wrist"].std() > 0  # it renders
        obs, reward, terminated, truncated, _ = env.step(obs["state"])
        assert not terminated and not truncated and 0.0 <= reward < 1.0
    finally:
        env.close()


def test_reach_draws_the_ball_in_its_box_and_its_expert_gets_there():
    env = SimEnv("so101_reach", render=False)
    try:
        r = env.task.config["reset"]
        for seed in range(3):
            expert = make_expert(env.task, seed)
            expert.reset()
            obs = env.reset(seed)
            for key, value in zip(("target_x", "target_y", "target_z"), obs["target"], strict=True):
                assert r[key][0] <= value <= r[key][1]
            assert not env.logic.evaluate(env.model, env.data)[1]
            for _ in range(env.task.max_steps):
                obs, score, success, done, info = env.step(expert.act(obs, env.robot))
                if done:
                    break
            assert success and info["distance"] <= env.task.config["success"]["radius"]
            tool = env.data.site("gripper").xpos
            assert np.linalg.norm(tool - obs["target"]) == pytest.approx(info["distance"], abs=1e-6)
    finally:
        env.close()


def test_the_sim_bench_renders_every_camera_of_the_arm():
    from robodiff.bench.sim import run

    speeds = run(["steps=20", f"tasks=[{TASK}]"], set())["tasks"][TASK]
    assert speeds["cameras"] == ["front 128x96", "wrist 128x96"] and speeds["fps"] == 30
    assert speeds["steps_per_s_render"] > 0 and speeds["realtime_factor_render"] > 0
