"""Teleop devices: where `robodiff collect` gets a person's actions.

The terminal keyboard drives a planar target (the pushers) or, on a robot with kinematics (an
arm), the arm's tool; the SpaceMouse and the gamepad drive an arm's tool; the leader arm gives the
joint positions a person moves it to. A simulated task's scripted expert is a teleop too,
registered by `robodiff.sim`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from robodiff.hal.base import Teleop, robot_limits
from robodiff.hal.teleop.gamepad import GamepadTeleop
from robodiff.hal.teleop.keyboard import ArmKeyboardTeleop, KeyboardTeleop
from robodiff.hal.teleop.leader import SO101Leader, leader_arm
from robodiff.hal.teleop.spacemouse import SpaceMouseTeleop

__all__ = ["TELEOPS", "KeyboardTeleop", "ArmKeyboardTeleop", "SpaceMouseTeleop", "GamepadTeleop", "SO101Leader"]


def keyboard(robot: Any, action_key: str) -> Teleop:
    """The keyboard driving `robot`: an arm's tool through its kinematics, else a planar target
    inside the limits the robot publishes."""
    if getattr(robot, "kinematics", None) is not None:
        return ArmKeyboardTeleop(robot, action_key)
    limits = robot_limits(robot, action_key)
    low = np.asarray(limits["low"], np.float32) if limits else None
    high = np.asarray(limits["high"], np.float32) if limits else None
    # One key press moves the target 2 % of the workspace: a few presses per block width.
    step = float(0.02 * np.min(high[:2] - low[:2])) if low is not None and low.size >= 2 else 0.01
    return KeyboardTeleop(robot.action_features[action_key], step=step, low=low, high=high)


TELEOPS: dict[str, Callable[..., Teleop]] = {
    "keyboard": keyboard,
    "spacemouse": SpaceMouseTeleop,
    "gamepad": GamepadTeleop,
    "leader": leader_arm,
}
