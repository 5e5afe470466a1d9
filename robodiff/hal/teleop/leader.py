"""`SO101Leader`: the leader arm as a teleop device: a person moves it by hand, its joint positions
are the action.

The leader has the follower's joints and servos (geared to back-drive by hand), its own bus, port
and calibration (`leader:` in the hardware YAML). Its torque stays off; its positions are read in
the same units as the follower's (both calibrated from the same middle pose), so the follower goes
where the leader is. The terminal's episode keys work when there is a terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from robodiff.errors import UserError
from robodiff.features import Feature, Features
from robodiff.hal.base import Teleop
from robodiff.hal.hardware import HardwareSpec
from robodiff.hal.motors.bus import open_serial
from robodiff.hal.robots.arm_bus import ArmBus
from robodiff.hal.teleop.terminal import EVENT_HELP, TerminalKeys, episode_events


class SO101Leader(Teleop):
    human = True
    help = f"move the leader arm; {EVENT_HELP}"

    def __init__(self, hardware: HardwareSpec, action_key: str = "action",
                 open_port: Callable[[str, int, float], Any] = open_serial, terminal_fd: int | None = None) -> None:
        super().__init__()
        self.arm = ArmBus(hardware, "leader", open_port)
        self.name = f"{hardware.name} leader on {self.arm.settings.port}"
        self.action_key = action_key
        self._feature = Feature("action", (len(self.arm.names),), "float32", names=tuple(self.arm.names),
                                units=self.arm.calibration.convention)
        self.terminal = TerminalKeys(terminal_fd)
        self._use_terminal = False

    @property
    def action_features(self) -> Features:
        return {self.action_key: self._feature}

    def _connect(self) -> None:
        self.arm.connect()
        try:
            self.arm.bus.torque(False)  # a leader is moved by hand
            self._use_terminal = TerminalKeys.available(self.terminal.fd)
            if self._use_terminal:
                self.terminal.open("leader")
        except BaseException:
            self.arm.bus.disconnect()
            raise

    def _disconnect(self) -> None:
        self.terminal.close()
        self.arm.bus.disconnect()

    def reset(self, seed: int | None = None) -> None:
        self.events.clear()
        self.terminal.clear()

    def _get_action(self, observation: dict[str, Any] | None) -> dict[str, np.ndarray]:
        if self._use_terminal:
            self.events += episode_events(self.terminal.keys())
        return {self.action_key: self.arm.positions().astype(np.float32)}

    def stats(self) -> dict[str, Any]:
        return {f"leader_{k}": v for k, v in self.arm.bus.stats().items()}


def leader_arm(robot: Any, action_key: str = "action") -> SO101Leader:
    """`teleop=leader` for `robot`: the leader described in the robot's hardware YAML (`leader:`)."""
    hardware = getattr(robot, "hardware", None)
    if not isinstance(hardware, HardwareSpec) or "leader" not in hardware.raw:
        raise UserError(f"teleop=leader: {getattr(robot, 'name', 'this robot')} has no leader arm "
                        f"(its hardware YAML has no 'leader' block)")
    leader = SO101Leader(hardware, action_key)
    theirs = robot.action_features[action_key]
    if theirs.units != leader.action_features[action_key].units or theirs.shape != leader._feature.shape:
        raise UserError(f"teleop=leader gives {list(leader._feature.shape)} joints in {leader._feature.units}, "
                        f"{robot.name} takes {list(theirs.shape)} in {theirs.units}")
    return leader
