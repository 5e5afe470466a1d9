"""Robots and teleop devices by name: `make_robot`, `make_teleop`.

A robot name is a hardware YAML (`hardware/<name>.yaml` or a path to one), built by the driver
it names, or a name another package registered (`register_robot`): `robodiff.sim` registers each
simulated task's robot, so hal never imports the simulation. Teleop devices are registered the
same way (the keyboard here, a task's scripted expert by `robodiff.sim`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from robodiff.errors import UserError
from robodiff.hal.base import Robot, Teleop
from robodiff.hal.hardware import HardwareSpec, load_hardware
from robodiff.hal.mujoco_robot import MujocoRobot
from robodiff.hal.robots.so101 import feetech_arm
from robodiff.hal.teleop import TELEOPS
from robodiff.paths import asset_dir

ROBOTS: dict[str, Callable[..., Robot]] = {}


def _mujoco(hardware: HardwareSpec, **kw: Any) -> Robot:
    """A bare MuJoCo hardware YAML: its own model (no cameras) or `scene=` (with them)."""
    scene = kw.get("scene")
    if kw.get("fps") is None:
        raise UserError(f"robot '{hardware.name}' ({hardware.path}) needs a control rate: set fps=")
    return MujocoRobot(Path(scene) if scene else hardware.path.parent / hardware.raw["model"], hardware,
                       fps=kw["fps"], realtime=kw.get("realtime", False),
                       cameras=bool(scene) and kw.get("render", True))


# driver name (a hardware YAML's `driver:`) -> builder(hardware, **keywords)
DRIVERS: dict[str, Callable[..., Robot]] = {"mujoco": _mujoco, "feetech": feetech_arm}


def register_robot(name: str, factory: Callable[..., Robot]) -> None:
    """`factory(**keywords)` builds the robot `name` (keywords as for `make_robot`)."""
    ROBOTS[name] = factory


def register_teleop(name: str, factory: Callable[..., Teleop]) -> None:
    """`factory(robot, action_key)` builds the teleop device `name` driving `robot`."""
    TELEOPS[name] = factory


def is_hardware(name: str) -> bool:
    path = Path(name)
    return (path.suffix in (".yaml", ".yml") and path.is_file()) or (asset_dir("hardware") / f"{name}.yaml").is_file()


def make_robot(name: str, settings: dict[str, Any] | None = None, **kw: Any) -> Robot:
    """Hardware names first, then registered ones. `settings`: the run's `robot.<key>=` values over
    the hardware YAML (a physical robot's port, cameras, ...). Keywords: `fps` (a hardware robot's
    control rate), `realtime` (pace a simulation to the wall clock), `render` (cameras on), `seed`
    (a task robot's reset draw), `scene` (an MJCF scene for a bare MuJoCo hardware YAML)."""
    if is_hardware(name):
        hardware = load_hardware(name, settings)
        if hardware.driver not in DRIVERS:
            raise UserError(f"robot '{hardware.name}' ({hardware.path}) uses driver '{hardware.driver}', "
                            "which is not available in this version of robodiff")
        return DRIVERS[hardware.driver](hardware, **kw)
    if name in ROBOTS:
        if settings:
            raise UserError(f"robot.{next(iter(settings))}=: robot '{name}' is simulated and has no settings "
                            f"(they are for a hardware YAML)")
        return ROBOTS[name](**kw)
    known = sorted({p.stem for p in asset_dir("hardware").glob("*.yaml")} | set(ROBOTS))
    raise UserError(f"unknown robot '{name}': not a hardware or task name "
                    f"(known: {', '.join(known)}; or pass a path to a hardware .yaml file)")


def make_teleop(name: str, robot: Robot, action_key: str = "action") -> Teleop:
    """A teleop device driving `robot`; unknown names are a UserError."""
    if name not in TELEOPS:
        raise UserError(f"unknown teleop '{name}' (known: {', '.join(TELEOPS)})")
    return TELEOPS[name](robot, action_key)
