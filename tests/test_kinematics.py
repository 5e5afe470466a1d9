"""The arm's FK / damped-least-squares IK (hal/kinematics.py) on the SO-101 model."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from robodiff.errors import UserError
from robodiff.hal.hardware import load_hardware
from robodiff.hal.kinematics import ArmKinematics


@pytest.fixture(scope="module")
def kin():
    return ArmKinematics(load_hardware("so101"))


def _random_joints(kin, rng, margin=0.9):
    low, high = kin.units.to_units(np.stack([kin._low, kin._high]))
    return rng.uniform(margin * low, margin * high)


def test_forward_at_zero_radians_is_the_gripper_frame(kin):
    pose = kin.forward(kin.units.to_units(np.zeros(5)))
    np.testing.assert_allclose(pose, [0.391, 0, 0.227, 0, 0], atol=1e-9)


def test_pitch_and_roll_are_the_arms_plane_angles(kin):
    # lift, elbow and wrist flex turn about parallel axes: pitch is their sum; roll is the wrist roll,
    # whatever the pan, and pointing straight down is no singularity
    rng = np.random.default_rng(1)
    for _ in range(20):
        radians = kin.units.to_radians(_random_joints(kin, rng))
        pose = kin.forward(kin.units.to_units(radians))
        wrapped = np.angle(np.exp(1j * (pose[3:] - [radians[1:4].sum(), radians[4]])))
        np.testing.assert_allclose(wrapped, 0.0, atol=1e-9)
    down = kin.forward(kin.units.to_units(np.array([0.7, -0.5, 0.5, np.pi / 2, 1.0])))
    assert down[3:] == pytest.approx([np.pi / 2, 1.0], abs=1e-9)


def test_inverse_reaches_what_forward_says_from_another_start(kin):
    # Poses over the table in front of the arm. Above the pan axis (or behind it) the pan would
    # have to turn half a turn, and its limit stands between start and pose: a local minimum of
    # any local solver, and no place a gripper works.
    rng = np.random.default_rng(0)
    poses = (kin.forward(_random_joints(kin, rng, margin=0.6)) for _ in range(1000))
    for pose in [p for p in poses if p[0] > 0.1 and p[2] < 0.3][:100]:
        result = kin.inverse(pose, _random_joints(kin, rng, margin=0.3))
        assert result.reached, pose
        np.testing.assert_allclose(kin.forward(result.joints), pose, atol=5e-4)


def test_inverse_stays_inside_the_joint_ranges_when_the_pose_is_out_of_reach(kin):
    low, high = kin.units.to_units(np.stack([kin._low, kin._high]))
    target = np.array([1.0, 0.5, 0.3, 0.0, 0.0])
    start = np.zeros(5)
    result = kin.inverse(target, start)
    assert not result.reached and result.position_error_m > 0.5
    assert np.all(result.joints >= low - 1e-9) and np.all(result.joints <= high + 1e-9)
    # it moved as close as it could: stretched out, turned towards the target
    before = np.linalg.norm(kin.forward(start)[:3] - target[:3])
    assert result.position_error_m < before - 0.05
    tip = kin.forward(result.joints)[:3]
    assert np.linalg.norm(tip - kin.forward(start)[:3]) > 0.05 and tip[1] > 0.1


def test_top_down_grasps_over_the_table_are_reachable(kin):
    for x in (0.14, 0.18, 0.22):
        for y in (-0.14, 0.0, 0.14):
            for roll in (-0.7, 0.0, 0.7):
                result = kin.inverse(np.array([x, y, 0.006, np.pi / 2, roll]), np.zeros(5))
                assert result.reached, (x, y, roll)


def test_kinematics_work_in_either_unit_convention():
    hardware = load_hardware("so101")
    degrees, range100 = ArmKinematics(hardware), ArmKinematics(hardware.with_units("range100"))
    radians = np.array([0.3, -0.2, 0.4, 0.9, -0.5])
    pose = degrees.forward(degrees.units.to_units(radians))
    np.testing.assert_allclose(range100.forward(range100.units.to_units(radians)), pose, atol=1e-12)
    solved = range100.inverse(pose, np.zeros(5)).joints
    np.testing.assert_allclose(range100.units.to_radians(solved), radians, atol=1e-3)


def test_a_robot_without_kinematics_is_named():
    with pytest.raises(UserError, match="robot 'sim_pusher'.*no 'kinematics'"):
        ArmKinematics(load_hardware("sim_pusher"))


def test_the_simulated_arm_carries_its_kinematics():
    from robodiff.hal.mujoco_robot import MujocoRobot

    hardware = load_hardware("so101")
    robot = MujocoRobot(hardware.model_path, hardware, fps=30, cameras=False)
    target = robot.kinematics.inverse(np.array([0.2, 0.05, 0.1, 1.2, 0.3]), np.zeros(5))
    assert target.reached
    with robot:
        for _ in range(60):
            robot.send_action({"action": np.array([*target.joints, 50.0])})
        state = robot.get_observation()["state"]
        # the pose the arm's state gives is where the simulated tool is
        np.testing.assert_allclose(robot.kinematics.forward(state)[:3], robot.data.site("gripper").xpos, atol=1e-4)
        np.testing.assert_allclose(robot.data.site("gripper").xpos, [0.2, 0.05, 0.1], atol=2e-3)
