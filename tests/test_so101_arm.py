"""The physical SO-101 against its bus emulator: calibration with a scripted person (offsets, ranges,
the wrap point, offsets beyond +-2047), the follower (checks at connect, no jump at torque on,
limits, the gripper's current, units equal to the simulated arm's, torque off at the end) and the
leader arm as a teleop device."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import robodiff.sim  # noqa: F401  (registers the simulated robots)
from robodiff.errors import UserError
from robodiff.hal import make_robot, make_teleop
from robodiff.hal.calibration import record_calibration
from robodiff.hal.emulator import CalibrationPerson, TeleopPerson
from robodiff.hal.hardware import load_hardware
from tests.emulated_arm import LEADER_SEED, FakeClock, bus_at, calibrate_emulated, emulated

NAMES = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
SIM = load_hardware("so101")  # the simulated arm's units


@pytest.fixture(scope="module")
def calibrations(tmp_path_factory):
    """Both emulated arms calibrated once by the real procedure; the files in a user directory."""
    folder = tmp_path_factory.mktemp("calibration")
    before = os.environ.get("ROBODIFF_CALIBRATION_DIR")
    os.environ["ROBODIFF_CALIBRATION_DIR"] = str(folder)
    links = tmp_path_factory.mktemp("links")
    follower = calibrate_emulated(links / "follower", "so101_follower")
    leader = calibrate_emulated(links / "leader", "so101_leader", assembly_seed=LEADER_SEED, voltage_v=5.0)
    yield {"follower": follower, "leader": leader, "dir": folder}
    if before is None:
        del os.environ["ROBODIFF_CALIBRATION_DIR"]
    else:
        os.environ["ROBODIFF_CALIBRATION_DIR"] = before


def test_calibration_finds_the_assembly_and_the_joint_ranges(calibrations, tmp_path):
    saved = json.loads((calibrations["dir"] / "so101_follower.json").read_text())
    assert list(saved) == NAMES
    assert set(saved["gripper"]) == {"id", "drive_mode", "homing_offset", "range_min", "range_max"}
    assert saved["wrist_roll"]["range_min"] == 0 and saved["wrist_roll"]["range_max"] == 4095
    with emulated(tmp_path / "arm") as emulator:
        arm = emulator.arm
        for j, name in enumerate(NAMES):  # the middle pose reads 2047 after the offset
            middle = arm.encoder(j, (arm.low[j] + arm.high[j]) / 2)
            assert abs(middle - saved[name]["homing_offset"] - 2047) <= 3, name
    # The calibrated range is the simulated arm's (degrees: 0 in the middle; gripper 0..100).
    low, high = calibrations["follower"].limits()
    sim_low, sim_high = SIM.units.to_units(np.stack([arm.low, arm.high]))
    np.testing.assert_allclose(low[:4], sim_low[:4], atol=2.5)
    np.testing.assert_allclose(high[:4], sim_high[:4], atol=2.5)
    assert (low[4], high[4]) == (-180.0, 180.0) and (low[5], high[5]) == (0.0, 100.0)


def test_a_wrap_point_inside_a_joints_travel_is_refused(tmp_path):
    clock = FakeClock()

    def crooked(low, high):  # the "middle" pose given with the pan at one end of its travel
        middle = (low + high) / 2
        middle[0] = low[0] + 0.1
        return CalibrationPerson(low, high, middle=middle)

    with emulated(tmp_path / "arm", now=clock, person=crooked) as emulator:
        bus = bus_at(tmp_path / "arm")

        def wait(_):  # a second for the person to reach the pose, the physics in small steps
            for _ in range(100):
                clock.advance(0.01)
                bus.read("Present_Position")

        with pytest.raises(UserError, match="joint 'shoulder_pan': the encoder's wrap point lies inside its travel"):
            record_calibration(bus, SIM, wait, lambda _: None,
                               lambda: clock.t - emulator.arm.person_t0 > emulator.arm.person.done_s,
                               lambda: clock.advance(0.01))


def test_the_emulator_says_once_when_its_person_has_finished(tmp_path):
    clock, told = FakeClock(), []
    with emulated(tmp_path / "arm", now=clock, person=lambda low, high: CalibrationPerson(low, high)) as emulator:
        emulator.arm.on_person_done = lambda: told.append(clock.t)
        bus = bus_at(tmp_path / "arm")
        bus.torque(False)  # the person starts when the arm goes limp
        start, done_s = emulator.arm.person_t0, emulator.arm.person.done_s
        clock.advance(done_s - 0.01)
        bus.read("Present_Position")
        assert told == []
        for _ in range(3):
            clock.advance(0.02)
            bus.read("Present_Position")
        assert told == [pytest.approx(start + done_s + 0.01)]


def test_an_offset_beyond_2047_is_refused_in_one_line(tmp_path):
    with emulated(tmp_path / "arm") as emulator:
        emulator.arm.mount[2] = 4095  # the elbow's horn a half turn round: its middle reads 4095
        bus = bus_at(tmp_path / "arm")
        with pytest.raises(UserError, match="joint 'elbow_flex': homing offset 2048 exceeds \\+-2047") as err:
            record_calibration(bus, SIM, lambda _: None, lambda _: None, lambda: True, lambda: None)
        assert "\n" not in str(err.value)


def follower_at(link, **settings):
    return make_robot("so101", settings={"port": str(link), "cameras": None, **settings})


def test_the_follower_checks_its_servos_and_supply_at_connect(calibrations, tmp_path):
    with emulated(tmp_path / "arm", voltage_v=5.0):
        with pytest.raises(UserError, match="servos read 5.0-5.0 V, outside the 6-13 V the follower arm runs on"):
            follower_at(tmp_path / "arm").connect()
    with emulated(tmp_path / "arm") as emulator:
        emulator.arm.servos["wrist_flex"].set("Model_Number", 1025)
        with pytest.raises(UserError, match="servo 'wrist_flex' \\(id 4\\) is model number 1025, not the sts3215 \\(777\\)"):
            follower_at(tmp_path / "arm").connect()
    with pytest.raises(UserError, match="no calibration at .*robot_x.json: calibrate the follower arm first "
                                        "\\(`robodiff hardware calibrate robot=so101 arm=follower`\\)"):
        follower_at(tmp_path / "arm", id="robot_x")


def test_the_follower_goes_where_it_is_sent_in_the_simulated_arms_units(calibrations, tmp_path):
    clock = FakeClock()
    with emulated(tmp_path / "arm", now=clock) as emulator:
        arm = emulator.arm
        robot = follower_at(tmp_path / "arm")
        assert robot.action_features["action"].units == "degrees" and robot.observation_features["state"].names == tuple(NAMES)
        before = arm.joint_radians()
        robot.connect()
        for _ in range(50):
            clock.advance(0.01)
            robot.get_observation()
        np.testing.assert_allclose(arm.joint_radians(), before, atol=0.01)  # no jump at torque on
        gripper = arm.servos["gripper"]
        assert (gripper.get("Protection_Current"), gripper.get("Torque_Limit")) == (250, 500)
        assert arm.servos["elbow_flex"].get("P_Coefficient") == 16 and arm.servos["elbow_flex"].get("Torque_Enable") == 1

        target = np.array([30.0, -20.0, 45.0, -30.0, 60.0, 70.0])
        sent = robot.send_action({"action": target})["action"]
        np.testing.assert_allclose(sent, target, atol=0.1)  # rounded to servo steps
        for _ in range(150):
            clock.advance(0.01)
            obs = robot.get_observation()
        np.testing.assert_allclose(obs["state"], target, atol=1.5)
        np.testing.assert_allclose(SIM.units.to_units(arm.joint_radians()), target, atol=1.5)  # the same units

        low, high = robot.action_limits["low"], robot.action_limits["high"]
        sent = robot.send_action({"action": np.array([500.0, -500.0, 0, 0, 0, 150.0])})["action"]
        assert sent[0] == pytest.approx(high[0], abs=0.1) and sent[1] == pytest.approx(low[1], abs=0.1)
        assert sent[5] == pytest.approx(100.0, abs=0.1)
        assert np.all(robot.send_action({"action": np.full(6, np.nan)})["action"] == sent)  # dropped
        assert robot.action_limits["max_delta"][0] == pytest.approx(10.0, abs=0.01)  # limits.max_step_deg

        held = robot.hold()["action"]
        np.testing.assert_allclose(held, obs["state"], atol=0.2)
        robot.disconnect()
        assert all(s.get("Torque_Enable") == 0 for s in arm.servos.values())


def test_connect_puts_the_calibration_back_on_the_servos(calibrations, tmp_path):
    with emulated(tmp_path / "arm") as emulator:
        emulator.arm.servos["gripper"].set("Homing_Offset", 0)  # a servo swapped for a new one
        robot = follower_at(tmp_path / "arm")
        robot.connect()
        robot.disconnect()
        assert emulator.arm.servos["gripper"].get("Homing_Offset") == calibrations["follower"].joints["gripper"].homing_offset


def test_the_leader_reads_where_the_person_moves_it(calibrations, tmp_path):
    clock = FakeClock()
    with emulated(tmp_path / "follower", now=clock), \
            emulated(tmp_path / "leader", now=clock, voltage_v=5.0, assembly_seed=LEADER_SEED,
                     person=TeleopPerson) as leader_emulator:
        robot = follower_at(tmp_path / "follower", leader={"port": str(tmp_path / "leader")})
        leader = make_teleop("leader", robot)
        assert leader.action_features["action"] == robot.action_features["action"]
        with leader:
            assert all(s.get("Torque_Enable") == 0 for s in leader_emulator.arm.servos.values())
            for _ in range(50):
                clock.advance(0.02)
                action = leader.get_action()["action"]
            truth = SIM.units.to_units(leader_emulator.arm.joint_radians())
            np.testing.assert_allclose(action[:4], truth[:4], atol=2.0)
            np.testing.assert_allclose(action[5], truth[5], atol=2.0)
        assert leader.stats()["leader_bus_stale_reads"] == 0
    with pytest.raises(UserError, match="teleop=leader: .* has no leader arm"):
        make_teleop("leader", make_robot("push_block"))


def test_an_arm_yaml_of_ones_own(calibrations, tmp_path):
    """`robot=path/to/my_so101.yaml`: another id (so another calibration) and a misspelt setting."""
    import yaml

    raw = dict(SIM.raw, model=str(SIM.model_path), id="my_arm", port=str(tmp_path / "arm"), cameras=None)
    mine = tmp_path / "my_so101.yaml"
    mine.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="no calibration at .*my_arm.json"):
        make_robot(str(mine))
    (calibrations["dir"] / "my_arm.json").write_text((calibrations["dir"] / "so101_follower.json").read_text())
    with emulated(tmp_path / "arm"):
        with make_robot(str(mine)) as robot:
            assert robot.get_observation()["state"].shape == (6,)
        raw["servo_settings"] = {"gripper": {"Protection_Curent": 250}}
        mine.write_text(yaml.safe_dump(raw))
        with pytest.raises(UserError, match="servo model sts3215 has no register 'Protection_Curent'"):
            make_robot(str(mine)).connect()
