"""`robodiff hardware calibrate robot=R arm=follower|leader [port=PATH]`: calibrate one arm."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional

from omegaconf import MISSING

from robodiff.commands.hardware import enter_pressed, say, wait_for_enter
from robodiff.config import bounded, compose, to_dict, validate
from robodiff.errors import UserError
from robodiff.hal.calibration import calibration_path, record_calibration
from robodiff.hal.hardware import HardwareSpec, load_hardware
from robodiff.hal.robots.arm_bus import ARMS, BusSettings, check_servos, make_bus


@dataclass
class CalibrateConfig:
    robot: str = MISSING
    arm: str = MISSING
    port: Optional[str] = MISSING
    poll_s: float = bounded(gt=0, le=1)
    robot_settings: Dict[str, Any] = field(default_factory=dict)


SCHEMA = CalibrateConfig


def load_config(overrides: list[str]) -> Any:
    return validate(compose("hardware_calibrate", overrides, settings_of=("robot",)), CalibrateConfig)


def arm_bus_settings(cfg: Any) -> tuple[HardwareSpec, BusSettings]:
    """The arm's hardware YAML and bus settings, `port=` over the YAML's (setup-motors uses it too)."""
    if cfg.arm not in ARMS:
        raise UserError(f"arm={cfg.arm}: one of {', '.join(ARMS)}")
    hardware = load_hardware(cfg.robot, to_dict(cfg.robot_settings))
    settings = BusSettings.of(hardware, cfg.arm)
    return hardware, settings if cfg.port is None else replace(settings, port=str(cfg.port))


def run(overrides: list[str], flags: set[str]) -> dict:
    cfg = load_config(overrides)
    hardware, settings = arm_bus_settings(cfg)
    bus = make_bus(hardware, settings)
    bus.connect()
    try:
        check_servos(bus, settings, cfg.arm)
        say(f"Calibrating the {hardware.name} {cfg.arm} '{settings.arm_id}' on {settings.port}: its torque is "
            f"off now, move it by hand.")
        calibration = record_calibration(bus, hardware, wait_for_enter, say, enter_pressed,
                                         lambda: time.sleep(cfg.poll_s))
    finally:
        bus.disconnect()
    path = calibration_path(settings.arm_id)
    calibration.save(path)
    low, high = calibration.limits()
    for (name, joint), lo, hi in zip(calibration.joints.items(), low, high):
        say(f"  {name:14s} offset {joint.homing_offset:5d}  range {joint.range_min:4d}..{joint.range_max:4d}  "
            f"({lo:.1f} .. {hi:.1f} {calibration.convention})")
    say(f"saved {path}")
    return {"arm": cfg.arm, "id": settings.arm_id, "path": str(path),
            "joints": {n: vars(j) for n, j in calibration.joints.items()}}
