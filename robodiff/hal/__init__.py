"""Robots, cameras and teleop devices behind one interface; `make_robot` builds one by name."""

from __future__ import annotations

from robodiff.hal.base import Camera, Robot, Teleop
from robodiff.hal.registry import make_robot, make_teleop, register_robot, register_teleop

__all__ = ["Camera", "Robot", "Teleop", "make_robot", "make_teleop", "register_robot", "register_teleop"]
