"""Scripted experts (`policy=expert`, `teleop=expert`): closed-loop pushers that read the sim state.

Both experts command a point a bounded distance ahead of the pusher (like a person leading it with a
mouse), so their actions are smooth and the PD-driven pusher never lags far behind. They travel
around the block on a circle of safe radius until the straight way to the pre-push point is free,
then push through the chosen contact point.

- push_block: two pushes on flat faces, sideways into line with the target, then on to it; goes the
  shorter way round the block, and the way drawn per episode when both are about as long (rare
  from the task's resets: the demonstrations are multimodal only there).
- push_t: best effort. Pushes at the contact on the T's outline whose push best produces the
  wanted translation + rotation of the block, and stays with it while it remains nearly the best.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from robodiff.errors import UserError
from robodiff.features import Features
from robodiff.hal.base import Teleop
from robodiff.sim.arm_experts import PickPlaceExpert, ReachExpert
from robodiff.sim.coverage import T_PARTS, distance_to_parts, place, rotation
from robodiff.sim.tasks import TaskSpec, as_task


class Expert(Protocol):
    def reset(self) -> None: ...

    def act(self, obs: dict[str, Any], robot: Any) -> np.ndarray: ...


def _lead(agent: np.ndarray, waypoint: np.ndarray, lead: float) -> np.ndarray:
    """The commanded point: towards `waypoint`, at most `lead` ahead of the pusher."""
    delta = waypoint - agent
    dist = float(np.linalg.norm(delta))
    return waypoint if dist <= lead else agent + delta * (lead / dist)


def _around(agent: np.ndarray, center: np.ndarray, radius: float, side: float, pusher_radius: float) -> np.ndarray:
    """Next waypoint on the circle (center, radius), turning counter-clockwise if side > 0, kept
    clear of the table's walls (a pusher driven into one stalls there)."""
    rel = agent - center
    angle = np.arctan2(rel[1], rel[0]) + side * 0.6
    waypoint = center + radius * np.array([np.cos(angle), np.sin(angle)])
    return np.clip(waypoint, pusher_radius + 10.0, 512.0 - pusher_radius - 10.0)


class PushBlockExpert:
    """Two pushes on flat faces: sideways until the block is in line with the target, then
    straight on. A round pusher on a face moves the block along the face normal wherever it
    touches, so neither push needs a precise contact point (a corner push turns with every unit of
    contact error), and the sideways push ends at a fixed pusher position, which the policy observes."""

    def __init__(self, task: TaskSpec, seed: int | None) -> None:
        cfg = task.config["expert"]
        self.speed = float(cfg["speed"])
        self.push_lead = float(cfg["push_lead"])
        self.margin = float(cfg["margin"])
        self.tolerance = float(cfg["tolerance"])
        radius = float(task.config["success"]["radius"])
        if self.tolerance >= radius:
            raise UserError(f"{task.path}: 'expert.tolerance' ({self.tolerance:g}) must be below 'success.radius' "
                            f"({radius:g}): a last push that far out of line can pass beside the target")
        self.rng = np.random.default_rng(seed)
        self.side = 1.0
        self.pushing = False
        self.aligning = False

    def reset(self) -> None:
        self.side = float(self.rng.choice([-1.0, 1.0]))
        self.pushing = False
        self.aligning = False

    def _axis(self, block: np.ndarray, goal: np.ndarray) -> tuple[int, float]:
        """The push now and how far it has to go: sideways while the block is more than
        `tolerance` out of line with the target, aiming for a quarter of it so that the block does
        not hover at the threshold; then on to the target."""
        ex = float(goal[0] - block[0])
        aligning = abs(ex) > (0.25 if self.aligning else 1.0) * self.tolerance
        if aligning != self.aligning:
            self.aligning, self.pushing = aligning, False
        return (0, ex) if self.aligning else (1, float(goal[1] - block[1]))

    def act(self, obs: dict[str, Any], robot: Any) -> np.ndarray:
        logic = robot.logic
        agent, block, goal = logic.agent_pos(robot.data), logic.block_pos(robot.data), logic.goal
        s, r = logic.half_size, logic.agent_radius
        axis, error = self._axis(block, goal)
        d = np.zeros(2)
        d[axis] = 1.0 if error >= 0.0 else -1.0
        contact = block - d * (s + r)
        prepush = contact - d * self.margin
        if self.pushing and np.linalg.norm(agent - contact) > 25.0:
            self.pushing = False
        if not self.pushing and np.linalg.norm(agent - prepush) < 10.0:
            self.pushing = True
        if self.pushing:
            # Leading by at most the distance left stops the block where the push ends (in line
            # with the target, or on it) instead of carrying it past. Pulling the pusher back to the
            # face's centre keeps it off the corners, where it would push at an angle.
            lead = min(self.push_lead, max(5.0, abs(error)))
            centre = contact - agent
            centre -= d * np.dot(centre, d)
            return (contact + d * lead + centre).astype(np.float32)
        if float(np.dot(agent - block, -d)) >= float(np.dot(prepush - block, -d)) - 2.0:
            waypoint = prepush
        else:
            waypoint = _around(agent, block, s * np.sqrt(2) + r + self.margin, self._turn(agent, block, d), r)
        return _lead(agent, waypoint, self.speed).astype(np.float32)

    def _turn(self, agent: np.ndarray, block: np.ndarray, d: np.ndarray) -> float:
        """The shorter way round the block to the pre-push side; the episode's drawn side when both
        are about as long (the pusher within ~36 degrees of straight across from that side)."""
        rel = agent - block
        gap = np.arctan2(-d[1], -d[0]) - np.arctan2(rel[1], rel[0])
        gap = (gap + np.pi) % (2 * np.pi) - np.pi
        return self.side if abs(gap) > 0.8 * np.pi else float(np.sign(gap))


def _t_outline_contacts(step: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Contact candidates on the T's outline (local frame) with outward normals; none in the two
    concave corners, where the round pusher cannot reach."""
    outline = np.array([[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30], [-60, 30]], float)
    concave = {(15.0, 30.0), (-15.0, 30.0)}
    points, normals = [], []
    for i in range(len(outline)):
        a, b = outline[i], outline[(i + 1) % len(outline)]
        length = float(np.linalg.norm(b - a))
        edge = (b - a) / length
        normal = np.array([edge[1], -edge[0]])
        for t in np.arange(step / 2, length, step):
            p = a + edge * t
            near_concave = any(np.linalg.norm(p - np.array(c)) < 18.0 for c in concave)
            if not near_concave:
                points.append(p)
                normals.append(normal)
    return np.array(points), np.array(normals)


class PushTExpert:
    """Deterministic: `seed` is accepted for the common signature and not needed."""

    def __init__(self, task: TaskSpec, seed: int | None) -> None:
        cfg = task.config["expert"]
        self.speed = float(cfg["speed"])
        self.push_lead = float(cfg["push_lead"])
        self.margin = float(cfg["margin"])
        self.keep_ratio = float(cfg["keep_ratio"])
        self.points, self.normals = _t_outline_contacts()
        areas = np.array([3600.0, 2700.0])
        self.com = (areas[0] * np.array([0, 15.0]) + areas[1] * np.array([0, 75.0])) / areas.sum()
        self.reach = float(max(np.linalg.norm(p - self.com) for part in T_PARTS for p in part))
        self.contact: int | None = None
        self.pushing = False
        self.turn = 0.0

    def reset(self) -> None:
        self.contact, self.pushing, self.turn = None, False, 0.0

    def _turn(self, pose: np.ndarray, goal: np.ndarray) -> float:
        """Rotation still needed. Near a half turn the shorter way flips back and forth as the block
        wobbles, so the direction is committed until the block is well on its way."""
        dtheta = (goal[2] - pose[2] + np.pi) % (2 * np.pi) - np.pi
        if abs(dtheta) < 2.0:
            self.turn = 0.0
        elif self.turn == 0.0:
            self.turn = float(np.sign(dtheta))
        elif np.sign(dtheta) != self.turn:
            dtheta += self.turn * 2 * np.pi
        return dtheta

    def _gains(self, pose: np.ndarray, goal: np.ndarray, r: float, dtheta: float) -> np.ndarray:
        """How much pushing at each contact moves the block's points the way they should go."""
        rot = rotation(pose[2])
        com = pose[:2] + rot @ self.com
        goal_com = goal[:2] + rotation(goal[2]) @ self.com
        world = self.points @ rot.T + pose[:2]
        pushes = -(self.normals @ rot.T)
        lever = world - com
        wanted = (goal_com - com) + dtheta * np.stack([-lever[:, 1], lever[:, 0]], axis=1)
        gain = np.sum(pushes * wanted, axis=1)
        prepush = world - pushes * (r + self.margin)
        gain[~np.all((prepush > 20.0) & (prepush < 492.0), axis=1)] = -np.inf
        return gain

    def act(self, obs: dict[str, Any], robot: Any) -> np.ndarray:
        logic = robot.logic
        agent, pose, goal = logic.agent_pos(robot.data), logic.block_pose(robot.data), logic.goal
        r = logic.agent_radius
        gain = self._gains(pose, goal, r, self._turn(pose, goal))
        if gain.max() <= 0:
            # no useful contact can be reached (the block is against a wall): bring it to the middle
            gain = self._gains(pose, np.array([256.0, 256.0, pose[2]]), r, 0.0)
        best = int(np.argmax(gain))
        if gain[best] <= 0:
            return agent.astype(np.float32)
        # stay with a contact while it still does most of the good the best one would: every
        # switch costs a trip around the block
        if self.contact is None or gain[self.contact] < self.keep_ratio * gain[best]:
            self.contact, self.pushing = best, False
        rot = rotation(pose[2])
        point = rot @ self.points[self.contact] + pose[:2]
        push = -(rot @ self.normals[self.contact])
        prepush = point - push * (r + self.margin)
        parts = place(T_PARTS, pose)
        gap = distance_to_parts(agent, parts) - r
        offset = abs(float(push[0] * (agent - point)[1] - push[1] * (agent - point)[0]))
        # start behind the contact, lined up; then keep pushing until the contact is switched
        # or the pusher has lost the block
        if self.pushing:
            self.pushing = gap < self.margin + 20.0
        else:
            self.pushing = offset < 8.0 and (gap < 4.0 or np.linalg.norm(agent - prepush) < 8.0)
        if self.pushing:
            error = np.linalg.norm(goal[:2] - pose[:2]) + 60.0 * abs((goal[2] - pose[2] + np.pi) % (2 * np.pi) - np.pi)
            lead = min(self.push_lead, max(4.0, 0.5 * float(error)))
            return _lead(agent, point + push * lead, lead).astype(np.float32)
        if self._clear(agent, prepush, parts, r):
            waypoint = prepush
        else:
            com = pose[:2] + rot @ self.com
            side = np.sign(np.cross(np.append(agent - com, 0), np.append(prepush - com, 0))[2]) or 1.0
            waypoint = _around(agent, com, self.reach + r + self.margin, float(side), r)
        return _lead(agent, waypoint, self.speed).astype(np.float32)

    @staticmethod
    def _clear(a: np.ndarray, b: np.ndarray, parts: list[np.ndarray], r: float) -> bool:
        return all(distance_to_parts(a + t * (b - a), parts) > r + 2.0 for t in np.linspace(0, 1, 12))


EXPERTS = {"push_block": PushBlockExpert, "push_t": PushTExpert, "pick_place": PickPlaceExpert,
           "reach": ReachExpert}


def make_expert(task: str | Path | TaskSpec, seed: int | None = None) -> Expert:
    spec = as_task(task)
    logic = spec.config.get("logic")
    if logic not in EXPERTS:
        raise UserError(f"task '{spec.name}' has no scripted expert (experts: {', '.join(EXPERTS)})")
    return EXPERTS[logic](spec, seed)


class ExpertTeleop(Teleop):
    """A task robot's scripted expert as a teleop device; `reset(seed)` starts a new seeded
    episode (the expert's own choices, e.g. which way round the block, drawn from `seed`)."""

    name = "expert"

    def __init__(self, robot: Any, action_key: str = "action"):
        super().__init__()
        task = getattr(robot, "task", None)
        if task is None or task.kind != "mujoco":
            raise UserError(f"teleop=expert needs a simulated MuJoCo task's robot, not {robot.name}")
        self.robot = robot
        self.task = task
        self.action_key = action_key
        self._expert: Expert | None = None

    @property
    def action_features(self) -> Features:
        return {self.action_key: self.task.features[self.task.action_key]}

    def _connect(self) -> None:
        make_expert(self.task, None)  # a task without an expert fails here, before anything runs

    def _disconnect(self) -> None:
        self._expert = None

    def reset(self, seed: int | None = None) -> None:
        self._expert = make_expert(self.task, seed)
        self._expert.reset()

    def _get_action(self, observation: dict[str, Any] | None) -> dict[str, np.ndarray]:
        if self._expert is None:
            raise RuntimeError("ExpertTeleop.reset(seed) must be called at the start of each episode")
        if observation is None:
            raise RuntimeError("the scripted expert needs the current observation")
        return {self.action_key: np.asarray(self._expert.act(observation, self.robot), dtype=np.float32)}
