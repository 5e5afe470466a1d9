"""Simulated tasks: task YAML -> TaskSpec, task logic, scripted experts, the gymnasium adapter.

Importing this package registers with hal every task's robot (`make_robot("push_block")`) and the
scripted expert as a teleop device (`teleop=expert`): hal never imports the simulation.
"""

from __future__ import annotations

import functools

from robodiff.hal.hardware import read_yaml
from robodiff.hal.registry import register_robot, register_teleop
from robodiff.paths import asset_dir
from robodiff.sim.env import task_robot
from robodiff.sim.experts import ExpertTeleop


def register() -> None:
    for path in sorted(asset_dir("tasks").glob("*.yaml")):
        if read_yaml(path).get("kind", "mujoco") != "physical":  # a physical task has no simulated robot
            register_robot(path.stem, functools.partial(task_robot, path.stem))
    register_teleop("expert", ExpertTeleop)


register()
