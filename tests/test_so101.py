"""The SO-101 model: kinematics as in HARDWARE.md, the unit mapping of hardware/so101.yaml checked
against the MJCF's ranges, and the simulated arm working in those units."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np
import pytest

from robodiff.errors import UserError
from robodiff.features import Feature, features_from_dict, features_to_dict
from robodiff.hal import make_robot
from robodiff.hal.hardware import load_hardware
from robodiff.hal.mujoco_robot import MujocoRobot

# HARDWARE.md: joint anchors at q = 0 (metres), axes, ranges (radians)
ANCHORS = {"shoulder_pan": (0.0388, 0, 0.0624), "shoulder_lift": (0.0692, -0.0183, 0.1166),
           "elbow_flex": (0.0972, -0.0183, 0.2292), "wrist_flex": (0.2321, -0.0183, 0.2344),
           "wrist_roll": (0.2932, 0, 0.2344)}
AXES = {"shoulder_pan": (0, 0, -1), "shoulder_lift": (0, 1, 0), "elbow_flex": (0, 1, 0),
        "wrist_flex": (0, 1, 0), "wrist_roll": (1, 0, 0)}
RANGES = {"shoulder_pan": (-1.91986, 1.91986), "shoulder_lift": (-1.74533, 1.74533),
          "elbow_flex": (-1.69, 1.69), "wrist_flex": (-1.65806, 1.65806),
          "wrist_roll": (-2.74385, 2.84121), "gripper": (-0.17453, 1.74533)}
GRIPPER_FRAME = (0.391, 0, 0.227)


@pytest.fixture(scope="module")
def arm():
    hardware = load_hardware("so101")
    model = mujoco.MjModel.from_xml_path(str(hardware.model_path))
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    return hardware, model, data


def test_the_mjcf_has_the_arms_kinematics(arm):
    hardware, model, data = arm
    for name, anchor in ANCHORS.items():
        joint = model.joint(name).id
        np.testing.assert_allclose(data.xanchor[joint], anchor, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(data.xaxis[joint], AXES[name], atol=1e-9, err_msg=name)
    for name, rng in RANGES.items():
        np.testing.assert_allclose(model.jnt_range[model.joint(name).id], rng, err_msg=name)
        np.testing.assert_allclose(model.actuator_ctrlrange[model.actuator(name).id], rng, err_msg=name)
        assert model.actuator_forcerange[model.actuator(name).id].tolist() == [-3.35, 3.35]
    np.testing.assert_allclose(data.site("gripper").xpos, GRIPPER_FRAME, atol=1e-9)
    assert hardware.joints == tuple(RANGES) and hardware.kinematics.joints == tuple(ANCHORS)


@pytest.mark.parametrize("convention", ["degrees", "range100"])
def test_unit_mapping_follows_the_mjcf_ranges(arm, convention):
    hardware, model, _ = arm
    units = hardware.with_units(convention).units
    low, high = np.array([model.jnt_range[model.joint(n).id] for n in units.names]).T
    ends = units.to_units(np.stack([low, high]))
    middle = units.to_units((low + high) / 2)
    arm_joints = slice(0, 5)
    if convention == "degrees":
        np.testing.assert_allclose(middle[arm_joints], 0.0, atol=1e-3)
        np.testing.assert_allclose(units.scale[arm_joints], 180 / np.pi, rtol=1e-6)
    else:
        np.testing.assert_allclose(ends[:, arm_joints], [[-100] * 5, [100] * 5], atol=1e-3)
    np.testing.assert_allclose(ends[:, 5], [0.0, 100.0], atol=1e-3)  # gripper: closed .. open
    values = np.array([12.5, -40.0, 77.0, -3.0, 150.0, 42.0])
    np.testing.assert_allclose(units.to_units(units.to_radians(values)), values, atol=1e-9)


def test_a_unit_entry_missing_or_wrong_is_named(tmp_path, arm):
    hardware = arm[0]
    text = hardware.path.read_text()
    bad = tmp_path / "arm.yaml"
    bad.write_text(text.replace("model: so101.xml", f"model: {hardware.model_path}")
                   .replace("range100: {sign: 1, offset: 0.0, scale: 57.29575}", ""))
    with pytest.raises(UserError, match="joint 'shoulder_lift' needs 'range100: {sign, offset, scale}'"):
        load_hardware(str(bad))
    bad.write_text(text.replace("units: degrees", "units: radians"))
    with pytest.raises(UserError, match="units 'radians' is not one of degrees, range100"):
        load_hardware(str(bad))
    with pytest.raises(UserError, match="robot 'so101'.*has no 'turns' units"):
        hardware.with_units("turns")


def test_so101_means_the_physical_arm(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBODIFF_CALIBRATION_DIR", str(tmp_path))
    with pytest.raises(UserError, match="no calibration at .*so101_follower.json: calibrate the follower arm first"):
        make_robot("so101")


def _arm_robot(convention: str) -> MujocoRobot:
    hardware = load_hardware("so101").with_units(convention)
    return MujocoRobot(hardware.model_path, hardware, fps=30, cameras=False)


@pytest.mark.parametrize("convention", ["degrees", "range100"])
def test_the_simulated_arm_works_in_its_units(convention):
    robot = _arm_robot(convention)
    units = robot.units
    assert robot.action_features["action"].units == convention
    assert robot.observation_features["state"].units == convention
    low, high = robot.action_limits["action"]
    np.testing.assert_allclose(units.to_radians(np.stack([low, high])).T,
                               [RANGES[n] for n in units.names], atol=1e-6)
    target = np.array([20.0, -15.0, 30.0, 25.0, -40.0, 60.0])
    with robot:
        np.testing.assert_allclose(robot.get_observation()["state"], units.to_units(np.zeros(6)), atol=1e-4)
        for _ in range(60):  # 2 s
            sent = robot.send_action({"action": target})
        np.testing.assert_allclose(sent["action"], target, atol=1e-5)
        radians = robot.data.qpos[:6]
        np.testing.assert_allclose(radians, units.to_radians(target), atol=0.01)  # the servos got there
        np.testing.assert_allclose(robot.get_observation()["state"], target, atol=0.6)
        clamped = robot.send_action({"action": np.array([500.0, 0, 0, 0, 0, -50.0])})["action"]
        assert clamped[0] == pytest.approx(high[0]) and clamped[5] == pytest.approx(0.0)


def test_features_record_their_units(tmp_path):
    from robodiff.data.store import EpisodeStore

    feats = {"state": Feature("lowdim", (6,), units="degrees"), "action": Feature("action", (6,), units="degrees"),
             "timestamp": Feature("timestamp", (), "float64")}
    assert features_from_dict(features_to_dict(feats)) == feats
    assert Feature("action", (6,), units="degrees") != Feature("action", (6,), units="range100")
    assert "units" not in Feature("action", (6,)).to_dict()
    store = EpisodeStore.create(tmp_path / "s.zarr", feats, fps=30.0)
    store.close()
    with EpisodeStore.open(tmp_path / "s.zarr") as store:
        assert store.features["action"].units == "degrees" and store.features["timestamp"].units is None
    with pytest.raises(UserError, match="units must be a non-empty name"):
        Feature("action", (6,), units="")
