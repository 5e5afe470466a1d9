"""Robots, cameras and teleop devices behind one interface; `make_robot` builds one by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robodiff.errors import UserError
from robodiff.hal.base import Camera, Robot, Teleop
from robodiff.paths import asset_dir

__all__ = ["Camera", "Robot", "Teleop", "make_robot"]


def make_robot(name: str, **kw: Any) -> Robot:
    """A robot from `hardware/<name>.yaml` (or a path to one), or the simulated robot of a task.

    Keywords: `realtime` (pace the simulation to the wall clock), `render` (cameras on; default
    True), `seed` (a task robot's reset draw), `scene` (an MJCF scene for a bare MuJoCo hardware
    YAML; without it the robot's own model is loaded and it has no cameras).
    """
    from robodiff.hal.hardware import load_hardware

    is_file = Path(name).suffix in (".yaml", ".yml") and Path(name).is_file()
    is_hardware = is_file or (asset_dir("hardware") / f"{name}.yaml").is_file()
    if not is_hardware and not (asset_dir("tasks") / f"{name}.yaml").is_file():
        known = sorted(p.stem for kind in ("hardware", "tasks") for p in asset_dir(kind).glob("*.yaml"))
        raise UserError(f"unknown robot '{name}': not a hardware or task name "
                        f"(known: {', '.join(known)}; or pass a path to a hardware .yaml file)")
    if not is_hardware:
        from robodiff.sim.env import build_task_robot
        from robodiff.sim.tasks import load_task

        robot, _ = build_task_robot(load_task(name), render=kw.get("render", True),
                                    realtime=kw.get("realtime", False), seed=kw.get("seed"))
        return robot
    hardware = load_hardware(name)
    if not hardware.available:
        raise UserError(f"robot '{hardware.name}' ({hardware.path}) uses driver '{hardware.driver}', "
                        "which is not available in this version of robodiff")
    from robodiff.hal.mujoco_robot import MujocoRobot

    scene = kw.get("scene")
    return MujocoRobot(Path(scene) if scene else hardware.path.parent / hardware.raw["model"], hardware,
                       fps=kw.get("fps", 10.0), realtime=kw.get("realtime", False),
                       cameras=bool(scene) and kw.get("render", True))
