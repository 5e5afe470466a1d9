"""Teleop devices: the terminal keyboard on a real pseudo-terminal, the registry, the expert."""

from __future__ import annotations

import os
import termios

import numpy as np
import pytest

from robodiff.errors import UserError
from robodiff.features import Feature
from robodiff.hal import make_teleop
from robodiff.hal.teleop import TELEOPS, KeyboardTeleop

ACTION = Feature("action", (2,), "float32")


def test_keyboard_moves_target_from_arrow_and_wasd_keys(pty_pair):
    master, slave = pty_pair
    before = termios.tcgetattr(slave)
    teleop = KeyboardTeleop(ACTION, step=0.1, fd=slave)
    with teleop:
        assert not termios.tcgetattr(slave)[3] & termios.ICANON  # line buffering off while connected
        teleop.reset()
        obs = {"state": np.array([0.5, -0.2, 9.0], dtype=np.float32)}
        np.testing.assert_allclose(teleop.get_action(obs)["action"], [0.5, -0.2])
        os.write(master, b"\x1b[A\x1b[A" + b"d" + b"\x1bOD" + b"a")  # up, up, right, left, left
        np.testing.assert_allclose(teleop.get_action(obs)["action"], [0.4, 0.0], atol=1e-6)
        os.write(master, b"s ")
        np.testing.assert_allclose(teleop.get_action(obs)["action"], [0.4, -0.1], atol=1e-6)
        assert teleop.pop_event() == "done" and teleop.pop_event() is None
    assert termios.tcgetattr(slave) == before  # terminal restored on disconnect


def test_keyboard_escape_sequence_split_across_reads_and_events(pty_pair):
    master, slave = pty_pair
    teleop = KeyboardTeleop(ACTION, step=1.0, fd=slave, low=np.array([-1, -1]), high=np.array([1, 1]))
    with teleop:
        teleop.reset()
        os.write(master, b"\x1b[")
        np.testing.assert_allclose(teleop.get_action({})["action"], [0, 0])
        os.write(master, b"Cdddx")  # completes "right", then more right presses clip at the bound
        np.testing.assert_allclose(teleop.get_action({})["action"], [1, 0])
        assert teleop.pop_event() == "discard"
        os.write(master, b"q")
        teleop.get_action({})
        assert teleop.events == ["quit"]
        teleop.reset()
        assert teleop.events == [] and teleop.get_action({"state": np.zeros(2)})["action"].tolist() == [0, 0]


def test_keyboard_without_a_tty_is_a_clear_user_error():
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(UserError, match="not a TTY"):
            KeyboardTeleop(ACTION, fd=read_end).connect()
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("name", ["spacemouse", "gamepad", "leader"])
def test_devices_that_cannot_drive_this_robot_answer_with_one_line(name):
    assert name in TELEOPS
    with pytest.raises(UserError, match=f"teleop={name}") as err:
        make_teleop(name, robot=None)  # each needs an arm (the leader: one whose YAML has a leader)
    assert "\n" not in str(err.value)


def test_unknown_teleop_names_it():
    with pytest.raises(UserError, match="unknown teleop 'joystick'"):
        make_teleop("joystick", robot=None)


def test_expert_teleop_gives_the_scripted_experts_actions():
    import robodiff.sim  # noqa: F401  (registers teleop=expert with hal)
    from robodiff.sim.env import SimEnv
    from robodiff.sim.experts import make_expert

    env = SimEnv("push_block", render=False)
    try:
        teleop = make_teleop("expert", env.robot)
        reference = make_expert(env.task, 7)
        with teleop:
            teleop.reset(7)
            reference.reset()
            obs = env.reset(7)
            for _ in range(5):
                action = teleop.get_action(obs)["action"]
                np.testing.assert_allclose(action, reference.act(obs, env.robot), atol=1e-6)
                obs = env.step(action)[0]
    finally:
        env.close()


def test_the_expert_needs_a_simulated_task():
    import robodiff.sim  # noqa: F401

    robot = KeyboardTeleop(ACTION)  # anything that is not a task robot
    robot.name = "a keyboard"
    with pytest.raises(UserError, match="teleop=expert needs a simulated MuJoCo task's robot"):
        make_teleop("expert", robot)
