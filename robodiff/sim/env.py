"""A task's robot: `TaskRobot` (a MuJoCo task) or `GymTaskRobot` (a `kind: gym` task), and `SimEnv`.

`task_robot(task)` is what `make_robot("<task>")` hands to the episode loop (registered with hal by
`robodiff.sim`), so a policy sees identical observations in evaluation, collection and deployment.
A task robot also starts an episode from a seed (`reset_episode`), scores it (`evaluate`) and
tells its time in the episode (`episode_time_s`): what `TaskOutcome` reads.

`SimEnv` is the same robot behind a reset/step API (the gymnasium adapter and `bench sim` use it):

    env = SimEnv("push_block")
    obs = env.reset(seed=0)                       # feature name -> array, plus `timestamp`
    obs, score, success, done, info = env.step(action)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from robodiff.errors import UserError
from robodiff.hal.hardware import load_hardware
from robodiff.hal.mujoco_robot import MujocoRobot, load_model
from robodiff.sim.gym_tasks import GymTaskRobot
from robodiff.sim.logic import TaskLogic
from robodiff.sim.tasks import LOGIC, TaskSpec, as_task


class TaskRobot(MujocoRobot):
    """A MuJoCo task's robot: its observations are the task's, connect() samples a reset.

    Without real-time pacing each `send_action` is one control period, so the episode's time is
    the periods stepped since the reset; in real time it is the simulator's time since the reset
    (time the robot spends holding while a policy thinks counts, as it would on hardware)."""

    def __init__(self, task: TaskSpec, *, render: bool = True, realtime: bool = False,
                 seed: int | None = None) -> None:
        if task.kind != "mujoco":
            raise UserError(f"task '{task.name}' is a {task.kind} task and has no MuJoCo robot")
        model = load_model(Path(task.scene_path))
        self.task = task
        self.logic: TaskLogic = LOGIC[task.config["logic"]](task, model)
        rng = np.random.default_rng(seed)
        hardware = load_hardware(task.robot)
        units = task.features[task.action_key].units
        if units is not None:  # an arm works in the units the task's features declare
            hardware = hardware.with_units(units)
        super().__init__(model, hardware, fps=task.fps, realtime=realtime, cameras=render,
                         observation_features=task.features, observe=self.logic.observe,
                         initialize=lambda m, d: self.logic.reset(m, d, rng),
                         name=f"sim robot of task '{task.name}'")
        self.steps = 0

    def reset_episode(self, seed: int | None) -> None:
        """A new episode from the task's reset drawn with `seed` alone."""
        if not self.is_connected:
            self.connect()
        rng = np.random.default_rng(seed)
        self.reset(lambda m, d: self.logic.reset(m, d, rng))
        self.steps = 0

    def _send_action(self, action: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sent = super()._send_action(action)
        self.steps += 1
        return sent

    @property
    def episode_time_s(self) -> float:
        return float(self.data.time) if self.realtime else self.steps / self.fps

    ended = False  # a MuJoCo task ends on success or at its time budget only

    def evaluate(self) -> tuple[float, bool]:
        score, success, _ = self.logic.evaluate(self.model, self.data)
        return float(score), bool(success)

    def render_frame(self, size: int = 256) -> np.ndarray:
        camera = next(iter(self.hardware.cameras.values())).camera
        return self.render(camera, size)


def task_robot(task: str | Path | TaskSpec, *, render: bool = True, realtime: bool = False,
               seed: int | None = None, **_: Any) -> TaskRobot | GymTaskRobot:
    """The robot of any task (`make_robot`'s keywords; `fps` is the task's own)."""
    spec = as_task(task)
    if spec.kind == "gym":
        if realtime:
            raise UserError(f"task '{spec.name}' is a gym env, which steps only when asked: it cannot "
                            f"run in real time")
        return GymTaskRobot(spec, render=render)
    return TaskRobot(spec, render=render, realtime=realtime, seed=seed)


class SimEnv:
    def __init__(self, task: str | Path | TaskSpec, render: bool = True) -> None:
        task = as_task(task)
        self.task = task
        self.render = render
        self.robot = TaskRobot(task, render=render)

    @property
    def logic(self) -> TaskLogic:
        return self.robot.logic

    @property
    def model(self):
        return self.robot.model

    @property
    def data(self):
        return self.robot.data

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        self.robot.reset_episode(seed)
        return self.robot.get_observation()

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if not self.robot.is_connected:
            raise UserError(f"task '{self.task.name}': call reset() before step()")
        sent = self.robot.send_action({"action": np.asarray(action)})
        obs = self.robot.get_observation()
        score, success, info = self.logic.evaluate(self.model, self.data)
        done = success or self.robot.steps >= self.task.max_steps
        info.update(sent_action=sent["action"], steps=self.robot.steps, is_success=success, score=score)
        return obs, score, success, done, info

    def render_frame(self, size: int = 256) -> np.ndarray:
        return self.robot.render_frame(size)

    def close(self) -> None:
        self.robot.close()

    def __enter__(self) -> "SimEnv":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

