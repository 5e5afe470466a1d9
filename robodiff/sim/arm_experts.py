"""Scripted experts for the SO-101 tasks: they plan the tool's path in Cartesian space and turn it
into joint targets with the arm's own inverse kinematics (`robot.kinematics`), as a person with a
teleop device does. They read the simulation's state (the cube's or the ball's position), which a
policy does not.

Reach: the tool straight to the ball, pointing down. Pick and place: approach above the cube with
the jaws across two of its faces, descend, close, lift, carry above the square, lower, open,
retreat. The tool moves at a bounded speed, so the demonstrations are smooth and the arm's
position servos keep up.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robodiff.sim.tasks import TaskSpec

DOWN = np.pi / 2  # pitch of a tool pointing straight down


def _quarter_wrap(angle: float) -> float:
    """`angle` modulo a quarter turn, in (-pi/4, pi/4]: a cube looks the same every quarter turn."""
    return float((angle + np.pi / 4) % (np.pi / 2) - np.pi / 4)


def step_towards(pose: np.ndarray, waypoint: np.ndarray, reach: float) -> np.ndarray:
    """`pose` moved towards `waypoint` by at most `reach` metres, and 10 * reach radians (about
    2 rad/s at 0.2 m/s)."""
    delta = waypoint - pose
    dist = float(np.linalg.norm(delta[:3]))
    if dist > reach:
        delta[:3] *= reach / dist
    delta[3:] = np.clip(delta[3:], -10 * reach, 10 * reach)
    return pose + delta


class PickPlaceExpert:
    PHASES = ("approach", "descend", "close", "lift", "carry", "lower", "release", "retreat")

    def __init__(self, task: TaskSpec, seed: int | None) -> None:
        cfg = task.config["expert"]
        self.fps = float(task.fps)
        self.speed = float(cfg["speed"])
        self.hover = float(cfg["hover"])
        self.grasp_height = float(cfg["grasp_height"])
        self.grasp_offset = float(cfg["grasp_offset"])
        self.place_height = float(cfg["place_height"])
        self.open = float(cfg["open"])
        self.close_steps = int(cfg["close_steps"])
        self.reset()

    def reset(self) -> None:
        self.phase = "approach"
        self.pose: np.ndarray | None = None  # the commanded tool pose [x, y, z, pitch, roll]
        self.joints: np.ndarray | None = None  # the last IK solution (arm units)
        self.grip = self.open
        self.waited = 0
        self.carry_offset = np.zeros(2)  # tool minus cube centre in the table's plane, once held

    def _waypoint(self, robot: Any, tool: np.ndarray) -> np.ndarray:
        logic, kin = robot.logic, robot.kinematics
        cube = logic.cube_pose(robot.data)
        pose = self.pose.copy()
        if self.phase in ("approach", "descend"):
            # turn the jaws across two faces (the closer way round), and put the cube centre a
            # little towards the moving jaw so that the fixed jaw clears it on the way down
            closing_axis = kin.tool_rotation(self.joints)[:, 1]
            mismatch = _quarter_wrap(logic.cube_yaw(robot.data) - np.arctan2(closing_axis[1], closing_axis[0]))
            pose[4] = self.pose[4] - mismatch
            xy = cube[:2] - self.grasp_offset * closing_axis[:2]
            z = self.hover if self.phase == "approach" else self.grasp_height
            return np.array([*xy, z, DOWN, pose[4]])
        if self.phase in ("close", "release"):
            return pose
        if self.phase == "lift":
            self.carry_offset = tool[:2] - cube[:2]
            return np.array([*pose[:2], self.hover, DOWN, pose[4]])
        goal = logic.center + self.carry_offset
        if self.phase == "carry":
            return np.array([*goal, self.hover, DOWN, pose[4]])
        if self.phase == "lower":
            # the cube's bottom a few millimetres above the table
            z = tool[2] - (cube[2] - logic.cube_half) + self.place_height - self.grasp_height
            return np.array([*goal, z, DOWN, pose[4]])
        return np.array([*pose[:2], self.hover, DOWN, pose[4]])  # retreat

    def _step_towards(self, waypoint: np.ndarray) -> bool:
        """Move the commanded pose towards `waypoint` at the tool's speed; True once there."""
        self.pose = step_towards(self.pose, waypoint, self.speed / self.fps)
        return bool(np.allclose(self.pose, waypoint, atol=1e-6))

    def act(self, obs: dict[str, Any], robot: Any) -> np.ndarray:
        kin = robot.kinematics
        state = np.asarray(obs["state"], np.float64)
        tool = kin.forward(state)
        if self.pose is None:
            self.pose, self.joints = tool, state[: len(kin.names)]
        waypoint = self._waypoint(robot, tool)
        arrived = self._step_towards(waypoint)
        there = arrived and float(np.linalg.norm(tool[:3] - waypoint[:3])) < 0.004
        if self.phase in ("close", "release"):
            self.grip = 0.0 if self.phase == "close" else self.open
            self.waited += 1
            there = self.waited >= self.close_steps
        if there and self.phase != "retreat":
            self.phase = self.PHASES[self.PHASES.index(self.phase) + 1]
            self.waited = 0
        self.joints = kin.inverse(self.pose, self.joints).joints
        return np.array([*self.joints, self.grip], dtype=np.float32)


class ReachExpert:
    def __init__(self, task: TaskSpec, seed: int | None) -> None:
        self.fps = float(task.fps)
        self.speed = float(task.config["expert"]["speed"])
        self.reset()

    def reset(self) -> None:
        self.pose: np.ndarray | None = None
        self.joints: np.ndarray | None = None

    def act(self, obs: dict[str, Any], robot: Any) -> np.ndarray:
        kin = robot.kinematics
        state = np.asarray(obs["state"], np.float64)
        if self.pose is None:
            self.pose, self.joints = kin.forward(state), state[: len(kin.names)]
        waypoint = np.array([*robot.logic.target(robot.data), DOWN, self.pose[4]])
        self.pose = step_towards(self.pose, waypoint, self.speed / self.fps)
        self.joints = kin.inverse(self.pose, self.joints).joints
        return np.array([*self.joints, state[-1]], dtype=np.float32)
