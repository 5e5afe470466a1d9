"""`robodiff hardware setup-motors robot=R [arm=follower|leader] [port=PATH]`: ids and baud rates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import MISSING

from robodiff.commands.hardware import say, wait_for_enter
from robodiff.commands.hardware.calibrate import arm_bus_settings
from robodiff.config import compose, validate
from robodiff.hal.robots.setup import setup_motors


@dataclass
class SetupMotorsConfig:
    robot: str = MISSING
    arm: str = MISSING
    port: Optional[str] = MISSING
    robot_settings: Dict[str, Any] = field(default_factory=dict)


SCHEMA = SetupMotorsConfig


def load_config(overrides: list[str]) -> Any:
    return validate(compose("hardware_setup_motors", overrides, settings_of=("robot",)), SetupMotorsConfig)


def run(overrides: list[str], flags: set[str]) -> dict:
    cfg = load_config(overrides)
    hardware, settings = arm_bus_settings(cfg)
    ids = setup_motors(hardware, settings, wait_for_enter, say)
    say(f"all {len(ids)} servos are set up: chain them together, then `robodiff hardware calibrate "
        f"robot={cfg.robot} arm={cfg.arm}`")
    return {"arm": cfg.arm, "port": settings.port, "ids": ids}
