"""The MuJoCo backend as a Robot: hardware YAML checks, guards, clamping, PD physics, pacing, cameras."""

import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from robodiff.errors import UserError
from robodiff.hal import make_robot
from robodiff.hal.base import AlreadyConnectedError, NotConnectedError
from robodiff.hal.hardware import load_hardware
from robodiff.sim.env import TaskRobot
from robodiff.sim.tasks import load_task


def test_hardware_yaml_loads_and_rejects_bad_keys(tmp_path):
    hw = load_hardware("sim_pusher")
    assert hw.joints == ("agent_x", "agent_y") and hw.driver == "mujoco"
    np.testing.assert_array_equal(hw.action_high, [512, 512])
    bad = tmp_path / "bad.yaml"
    bad.write_text((hw.path).read_text().replace("joints:", "jionts:"))
    with pytest.raises(UserError, match="unknown key 'jionts'"):
        load_hardware(str(bad))


def test_unavailable_driver_and_unknown_name_are_clear_errors(tmp_path):
    assert load_hardware("so101").raw["bus"]["baudrate"] == 1_000_000
    koch = tmp_path / "koch.yaml"
    koch.write_text("name: koch\ndriver: dynamixel\n")
    with pytest.raises(UserError, match="koch.*driver 'dynamixel', which is not available"):
        make_robot(str(koch))
    with pytest.raises(UserError, match="unknown robot 'nope'"):
        make_robot("nope")


def test_guards_clamping_and_pd_step_response():
    robot = make_robot("sim_pusher", fps=10)
    assert robot.action_features["action"].shape == (2,)  # known before connecting
    with pytest.raises(NotConnectedError):
        robot.get_observation()
    with robot:
        with pytest.raises(AlreadyConnectedError):
            robot.connect()
        start = robot.get_observation()
        sent = robot.send_action({"action": np.array([100.0, -3.0])})
        np.testing.assert_array_equal(sent["action"], [100.0, 0.0])  # clamped to the table
        obs = robot.get_observation()
        assert obs["timestamp"] == pytest.approx(start["timestamp"] + 0.1)
        # critically damped PD (kp 100, kv 20 per unit mass): x(t)/x0 = 1 - (1 + 10 t) e^(-10 t)
        assert obs["state"][0] == pytest.approx(100 * (1 - 2 * np.exp(-1)), abs=1.5)
        for _ in range(20):
            robot.send_action({"action": np.array([100.0, 0.0])})
        assert robot.get_observation()["state"][0] == pytest.approx(100.0, abs=0.5)
        held = robot.send_action({"action": np.array([np.nan, 5.0])})  # non-finite: keep target
        np.testing.assert_array_equal(held["action"], [100.0, 0.0])
    assert not robot.is_connected


def test_task_robot_camera_sees_the_pusher_where_it_is():
    robot = make_robot("push_block", seed=3)
    # the same observations as the task's env, so a policy trained in sim deploys on it unchanged
    assert list(robot.observation_features) == ["image", "state", "timestamp"]
    with robot:
        obs = robot.get_observation()
        image = obs["image"]
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and image.std() > 10
        x, y = obs["state"]
        col, row = int(x / 512 * 96), int((512 - y) / 512 * 96)  # top camera, +y up
        r, g, b = image[row, col].astype(int)
        assert b > 150 and r < 120, "the blue pusher should be at its projected pixel"
        frame, stamp = robot.cameras["image"].read_latest(max_age_s=0.5)
        assert stamp == obs["timestamp"] and np.array_equal(frame, image)


class FakeWallClock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


def realtime_task_robot(seed: int, render: bool = True) -> tuple[TaskRobot, FakeWallClock]:
    """push_block's robot in real time, on a wall clock the test moves."""
    clock = FakeWallClock()
    robot = TaskRobot(load_task("push_block"), render=render, realtime=True, seed=seed)
    robot._now = clock
    return robot, clock


def test_realtime_follows_the_wall_clock():
    robot, clock = realtime_task_robot(0, render=False)
    with robot:
        first = robot.get_observation()
        assert first["timestamp"] == clock.t
        robot.send_action({"action": np.array([256.0, 256.0])})
        clock.t += 0.3
        obs = robot.get_observation()
        # simulated time kept up with the wall clock while nobody called (not one control period)
        assert obs["timestamp"] == pytest.approx(clock.t, abs=robot.model.opt.timestep)
        assert np.linalg.norm(obs["state"] - first["state"]) > 20  # it moved meanwhile
        clock.t += 10.0  # a stall longer than MAX_CATCH_UP_S: the simulation skips ahead
        assert robot.get_observation()["timestamp"] == pytest.approx(clock.t, abs=robot.model.opt.timestep)


@pytest.mark.slow
def test_realtime_follows_the_real_wall_clock():
    """The one real-time smoke test of the simulated robot (`pytest -m slow`)."""
    robot = make_robot("push_block", realtime=True, render=False, seed=0)
    with robot:
        first = robot.get_observation()
        robot.send_action({"action": np.array([256.0, 256.0])})
        time.sleep(0.3)
        obs = robot.get_observation()
        assert obs["timestamp"] - first["timestamp"] >= 0.29
        assert abs(obs["timestamp"] - time.monotonic()) < 0.1


def test_missing_scene_is_named(tmp_path):
    with pytest.raises(UserError, match="nowhere.xml"):
        make_robot("sim_pusher", fps=10, scene=str(tmp_path / "nowhere.xml"))


def test_action_limits_come_from_the_hardware_yaml_and_are_copies():
    hw = load_hardware("sim_pusher")
    robot = make_robot("sim_pusher", fps=10)
    low, high = robot.action_limits["action"]  # known before connecting, like the features
    np.testing.assert_array_equal(low, hw.action_low)
    np.testing.assert_array_equal(high, hw.action_high)
    high[:] = 1e9  # a caller cannot widen the robot's own clamp
    with robot:
        sent = robot.send_action({"action": hw.action_high + 100.0})
    np.testing.assert_array_equal(sent["action"], hw.action_high)
    assert set(robot.action_limits) == set(robot.action_features)


def test_hold_from_another_thread_stops_where_the_robot_is_without_rendering():
    import threading

    robot, clock = realtime_task_robot(0)
    render_threads: list[str] = []
    cam = robot.cameras["image"]
    original = cam.read_latest
    cam.read_latest = lambda *a, **k: (render_threads.append(threading.current_thread().name),
                                       original(*a, **k))[1]
    with robot:
        start = robot.get_observation()["state"].astype(np.float64)
        low, high = robot.action_limits["action"]
        far = np.where(start > (low + high) / 2, low, high)  # across the table: a long move
        robot.send_action({"action": far})
        clock.t += 0.2
        held: dict = {}
        worker = threading.Thread(target=lambda: held.update(robot.hold()), name="holder")
        worker.start()
        worker.join(5.0)
        at_hold = robot.data.qpos[robot._actuated_qpos].copy()
        assert "holder" not in render_threads  # the GL context never left the main thread
        # It commanded where the robot was (read from MuJoCo), mid-way, not the far target.
        assert np.linalg.norm(held["action"] - at_hold) < np.linalg.norm(far - start) * 0.1
        assert np.linalg.norm(at_hold - start) > 10 and np.linalg.norm(far - at_hold) > 10
        clock.t += 0.5
        after = robot.get_observation()["state"].astype(np.float64)
        # Stopped: it drifts only the distance a moving PD pusher needs to settle, not on to `far`.
        assert np.linalg.norm(after - held["action"]) < np.linalg.norm(far - held["action"]) * 0.25
    assert "MainThread" in render_threads
