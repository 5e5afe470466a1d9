"""`SimEnv`: a task's MujocoRobot plus its reset distribution, score and success (one sim core).

    env = make_env("push_block")
    obs = env.reset(seed=0)                       # feature name -> array, plus `timestamp`
    obs, score, success, done, info = env.step(action)
    frame = env.render_frame(256)                 # for videos

The same robot, built by `build_task_robot`, is what `make_robot("<task>")` hands to a control
loop, so a policy sees identical observations in evaluation and in deployment.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from robodiff.errors import UserError
from robodiff.hal.hardware import load_hardware
from robodiff.hal.mujoco_robot import MujocoRobot, load_model
from robodiff.sim.tasks import LOGIC, TaskSpec, as_task


class TaskLogic:
    """Runtime logic of a MuJoCo task: `observe`, `reset(model, data, rng)`, `evaluate`."""

    def __init__(self, task: TaskSpec, model) -> None:
        self.task = task
        self.cfg = task.config

    def qpos_adr(self, model, *joints: str) -> np.ndarray:
        try:
            return np.array([model.jnt_qposadr[model.joint(j).id] for j in joints])
        except KeyError as exc:
            raise UserError(f"{self.task.path}: the scene has no joint {exc}") from None

    def observe(self, model, data) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def reset(self, model, data, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def evaluate(self, model, data) -> tuple[float, bool, dict]:
        """(score in [0, 1], success, extra info) for the current state."""
        raise NotImplementedError


def set_mocap_pose(model, data, body: str, pose: np.ndarray) -> None:
    """Place a mocap body (e.g. a goal marker) at a planar pose (x, y, angle); z is kept."""
    mocap = model.body_mocapid[model.body(body).id]
    data.mocap_pos[mocap, :2] = pose[:2]
    data.mocap_quat[mocap] = [np.cos(pose[2] / 2), 0.0, 0.0, np.sin(pose[2] / 2)]


def _logic_class(task: TaskSpec) -> type[TaskLogic]:
    module, cls = LOGIC[task.config["logic"]].split(":")
    return getattr(importlib.import_module(module), cls)


def build_task_robot(task: TaskSpec, *, render: bool = True, realtime: bool = False,
                     seed: int | None = None) -> tuple[MujocoRobot, TaskLogic]:
    """The task's simulated robot: its observations are the task's, connect() samples a reset."""
    if task.kind != "mujoco":
        raise UserError(f"task '{task.name}' is a {task.kind} task and has no MuJoCo robot")
    hardware = load_hardware(task.robot)
    model = load_model(Path(task.scene_path))
    logic = _logic_class(task)(task, model)
    rng = np.random.default_rng(seed)
    robot = MujocoRobot(model, hardware, fps=task.fps, realtime=realtime, cameras=render,
                        observation_features=task.features, observe=logic.observe,
                        initialize=lambda m, d: logic.reset(m, d, rng),
                        name=f"sim robot of task '{task.name}'")
    return robot, logic


class SimEnv:
    def __init__(self, task: TaskSpec, render: bool = True) -> None:
        self.task = task
        self.render = render
        self.robot, self.logic = build_task_robot(task, render=render)
        self.steps = 0

    @property
    def model(self):
        return self.robot.model

    @property
    def data(self):
        return self.robot.data

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        if not self.robot.is_connected:
            self.robot.connect()
        rng = np.random.default_rng(seed)
        self.robot.reset(lambda m, d: self.logic.reset(m, d, rng))
        self.steps = 0
        return self.robot.get_observation()

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if not self.robot.is_connected:
            raise UserError(f"task '{self.task.name}': call reset() before step()")
        sent = self.robot.send_action({"action": np.asarray(action)})
        self.steps += 1
        obs = self.robot.get_observation()
        score, success, info = self.logic.evaluate(self.model, self.data)
        done = success or self.steps >= self.task.max_steps
        info.update(sent_action=sent["action"], steps=self.steps, is_success=success, score=score)
        return obs, score, success, done, info

    def render_frame(self, size: int = 256) -> np.ndarray:
        camera = next(iter(self.robot.hardware.cameras.values())).camera
        return self.robot.render(camera, size)

    def close(self) -> None:
        self.robot.close()

    def __enter__(self) -> "SimEnv":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_env(task: str | Path | TaskSpec, render: bool = True):
    """A SimEnv for a MuJoCo task, or a GymTaskEnv for a `kind: gym` task (same API)."""
    spec = as_task(task)
    if spec.kind == "gym":
        from robodiff.sim.gym_envs import GymTaskEnv

        return GymTaskEnv(spec, render=render)
    return SimEnv(spec, render=render)
