"""Tasks: YAML loading errors, Push-T coverage geometry, seeded resets, experts, step contract."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np
import pytest
import yaml
from matplotlib.path import Path as MplPath

from robodiff.errors import UserError
from robodiff.paths import asset_dir
from robodiff.sim.coverage import T_PARTS, coverage, place
from robodiff.sim.env import SimEnv
from robodiff.sim.experts import make_expert
from robodiff.sim.tasks import load_task

GOAL = np.array([256.0, 256.0, np.pi / 4])


def raster_coverage(block_pose, goal_pose, step=0.25):
    """Independent estimate: count grid points inside both Ts (matplotlib's point-in-polygon)."""
    goal = place(T_PARTS, goal_pose)
    block = place(T_PARTS, block_pose)
    lo, hi = np.min(np.vstack(goal), 0), np.max(np.vstack(goal), 0)
    xs, ys = np.meshgrid(np.arange(lo[0], hi[0], step) + step / 2, np.arange(lo[1], hi[1], step) + step / 2)
    pts = np.column_stack([xs.ravel(), ys.ravel()])
    in_goal = np.any([MplPath(p).contains_points(pts) for p in goal], axis=0)
    in_block = np.any([MplPath(p).contains_points(pts) for p in block], axis=0)
    return (in_goal & in_block).sum() / in_goal.sum()


@pytest.mark.parametrize("pose", [GOAL, GOAL + [12, -7, 0.2], GOAL + [-30, 25, -0.6],
                                  GOAL + [0, 40, np.pi], GOAL + [5, 5, np.pi / 2], GOAL + [300, 0, 0]])
def test_coverage_matches_rasterised_polygons(pose):
    exact = coverage(pose, GOAL)
    assert exact == pytest.approx(raster_coverage(pose, GOAL), abs=0.01)


def test_coverage_extremes():
    assert coverage(GOAL, GOAL) == pytest.approx(1.0)
    assert coverage(GOAL + [0, 0, 2 * np.pi], GOAL) == pytest.approx(1.0)
    assert coverage(GOAL + [200, 0, 0], GOAL) == 0.0


def test_load_task_spec():
    spec = load_task("push_t")
    assert spec.fps == 10 and spec.max_steps == 300 and spec.robot == "sim_pusher"
    assert spec.observation_keys == ["image", "state", "agent_pos"]
    assert spec.features["state"].shape == (5,) and spec.features["action"].shape == (2,)
    assert spec.features["timestamp"].kind == "timestamp" and spec.scene_path.is_file()
    assert load_task("push_block").observation_keys == ["image", "state"]
    # Policies see what the DP image benchmark sees; the privileged full state is only recorded.
    assert spec.policy_inputs == ["image", "agent_pos"]
    assert load_task("push_block").policy_inputs == ["image", "state"]


def test_a_training_run_on_a_task_defaults_to_its_policy_inputs(monkeypatch):
    from robodiff.commands import train as train_command

    seen = {}
    monkeypatch.setattr(train_command, "train", lambda cfg, *args: seen.update(args=args) or {})
    train_command.run([], ["task=push_t", "dataset=x.zarr"], set())
    name, keys, rollout = seen["args"]
    assert (name, keys) == ("push_t", ["image", "agent_pos"]) and callable(rollout)


def _task_copy(tmp_path, name="push_block", **changes):
    cfg = yaml.safe_load((asset_dir("tasks") / f"{name}.yaml").read_text())
    cfg["scene"] = str(asset_dir("tasks") / cfg["scene"])
    cfg.update(changes)
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_task_errors_name_the_offender(tmp_path):
    with pytest.raises(UserError, match="unknown task 'push_x'"):
        load_task("push_x")
    with pytest.raises(UserError, match="missing_scene.xml"):
        load_task(str(_task_copy(tmp_path, scene="missing_scene.xml")))
    with pytest.raises(UserError, match="unknown key 'max_stpes'"):
        load_task(str(_task_copy(tmp_path, max_stpes=3)))
    feats = yaml.safe_load((asset_dir("tasks") / "push_block.yaml").read_text())["features"]
    feats["image"]["shape"] = [64, 64, 3]
    with pytest.raises(UserError, match="image feature 'image' has shape"):
        load_task(str(_task_copy(tmp_path, features=feats)))
    with pytest.raises(UserError, match="policy_inputs entry 'action'"):
        load_task(str(_task_copy(tmp_path, policy_inputs=["image", "action"])))
    assert load_task(str(_task_copy(tmp_path))).name == "push_block"  # the copy itself is fine


@pytest.mark.parametrize("task", ["push_t", "push_block"])
def test_same_seed_same_initial_state_and_expert_trajectory(task):
    runs = []
    for _ in range(2):
        env, expert = SimEnv(task), make_expert(task, seed=11)
        obs = env.reset(seed=5)
        expert.reset()
        actions = []
        for _ in range(25):
            a = expert.act(obs, env)
            actions.append(a)
            obs, *_ = env.step(a)
        runs.append((env.reset(seed=5), np.array(actions)))
        env.close()
    (obs_a, act_a), (obs_b, act_b) = runs
    np.testing.assert_array_equal(obs_a["state"], obs_b["state"])
    np.testing.assert_array_equal(obs_a["image"], obs_b["image"])
    np.testing.assert_array_equal(act_a, act_b)
    env = SimEnv(task, render=False)
    assert not np.array_equal(env.reset(seed=5)["state"], env.reset(seed=6)["state"])
    env.close()


def _rollout(env, act, seed):
    obs = env.reset(seed=seed)
    while True:
        obs, score, success, done, info = env.step(act(obs))
        if done:
            return success, score, info


def test_push_block_expert_succeeds_pushing_on_faces_one_axis_at_a_time():
    env = SimEnv("push_block", render=False)
    results = []
    for seed in range(20):
        expert = make_expert("push_block", seed=seed)
        expert.reset()
        obs, path, done = env.reset(seed=seed), [env.logic.block_pos(env.data)], False
        while not done:
            obs, _, success, done, _ = env.step(expert.act(obs, env))
            path.append(env.logic.block_pos(env.data))
        results.append(success)
        steps = np.abs(np.diff(path, axis=0))
        steps = steps[steps.max(axis=1) > 1.0]  # the steps the block was pushed
        assert (steps.min(axis=1) < 0.15 * steps.max(axis=1)).all(), f"seed {seed}: a diagonal push"
        axis = steps.argmax(axis=1)
        assert (np.diff(axis) >= 0).all(), f"seed {seed}: not sideways first, then on to the target"
    assert np.mean(results) >= 0.95
    env.close()


def test_push_block_expert_goes_either_way_round_when_both_are_as_long():
    """The block in line below the target and the pusher straight above it: the expert's seed
    decides the side it passes the block on (multimodal demonstrations); otherwise the short way."""
    env = SimEnv("push_block", render=False)

    def side_passed(expert_seed: int, agent_x: float) -> int:
        expert = make_expert("push_block", seed=expert_seed)
        expert.reset()
        obs = env.reset(seed=0)
        for joint, value in (("block_x", 256.0), ("block_y", 260.0), ("agent_x", agent_x), ("agent_y", 445.0)):
            env.data.joint(joint).qpos[0] = value
        mujoco.mj_forward(env.model, env.data)
        for _ in range(40):
            agent = env.logic.agent_pos(env.data)
            if agent[1] < 260.0:
                return int(np.sign(agent[0] - 256.0))
            obs, *_ = env.step(expert.act(obs, env))
        raise AssertionError("the pusher never got below the block")

    seeds = range(8)  # they draw both sides, as the first assertion shows
    assert {side_passed(seed, 256.0) for seed in seeds} == {-1, 1}
    assert {side_passed(seed, 452.0) for seed in seeds} == {1}
    assert {side_passed(seed, 60.0) for seed in seeds} == {-1}
    env.close()


def test_push_block_expert_refuses_a_tolerance_that_misses_the_target(tmp_path):
    src = load_task("push_block").path
    text = src.read_text().replace("scene: push_block.xml", f"scene: {src.parent / 'push_block.xml'}")
    bad = tmp_path / "push_block.yaml"
    bad.write_text(text.replace("  tolerance: 16.0", "  tolerance: 25.0"))
    with pytest.raises(UserError, match=r"'expert.tolerance' \(25\) must be below 'success.radius' \(25\)"):
        make_expert(str(bad), seed=0)


def test_push_block_random_policy_mostly_fails_and_episodes_end_at_max_steps():
    env = SimEnv("push_block", render=False)
    rng = np.random.default_rng(0)
    results = [_rollout(env, lambda obs: rng.uniform(0, 512, 2), seed) for seed in range(20)]
    assert np.mean([r[0] for r in results]) <= 0.1
    failed = [r for r in results if not r[0]]
    assert all(r[2]["steps"] == 100 for r in failed)
    env.close()


def test_push_t_score_success_and_expert_progress():
    env = SimEnv("push_t", render=False)
    env.reset(seed=0)
    env.data.qpos[env.logic._block] = GOAL
    score, success, info = env.logic.evaluate(env.model, env.data)
    assert score == 1.0 and success and info["coverage"] == pytest.approx(1.0)
    # best effort expert: it must at least make clear progress from random starts
    best = []
    for seed in range(3):
        expert = make_expert("push_t", seed=seed)
        expert.reset()
        obs = env.reset(seed=seed)
        start = env.logic.evaluate(env.model, env.data)[0]
        top = start
        for _ in range(150):
            obs, score, success, done, _ = env.step(expert.act(obs, env))
            top = max(top, score)
            if done:
                break
        best.append(top - start)
    assert np.mean(best) > 0.3
    env.close()


def test_images_show_the_scene_and_video_frames():
    env = SimEnv("push_t")
    obs = env.reset(seed=1)
    assert obs["image"].shape == (96, 96, 3) and obs["image"].std() > 10
    frame = env.render_frame(256)
    assert frame.shape == (256, 256, 3) and frame.std() > 10
    green = (frame[..., 1] > 200) & (frame[..., 0] < 180)
    assert green.sum() > 500  # the goal T is drawn
    env.close()


def test_sim_speed_bench_measures_both_modes():
    from robodiff.bench.sim import run

    out = run(["steps=30", "tasks=[push_block]"], set())
    speeds = out["tasks"]["push_block"]
    assert speeds["steps_per_s_render"] > 0 and speeds["steps_per_s_no_render"] > 0
    with pytest.raises(UserError, match="unknown config key 'stpes' for `robodiff bench sim`"):
        run(["stpes=3"], set())
