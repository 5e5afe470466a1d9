"""Devices that move an arm's tool (keyboard, SpaceMouse, gamepad): end-effector increments and a
gripper command, turned into joint targets by the robot's own kinematics.

Every tick a device reports how far to move the tool pose `[x, y, z, pitch, roll]` (metres, radians;
the arm's base frame: +x forward, +y left, +z up) and how far to open the gripper (arm units,
negative closes). The target pose starts where the tool is; the part of an increment the arm cannot follow
(out of reach, a joint limit) is dropped, so the target never runs away from the arm. How fast
they move is the hardware YAML's `teleop:` block.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from robodiff.errors import UserError
from robodiff.features import Features
from robodiff.hal.base import Teleop
from robodiff.hal.teleop.terminal import TerminalKeys, episode_events

RATE_KEYS = ("speed", "turn_speed", "gripper_speed", "key_step", "key_turn", "key_gripper")


def hardware_library(module: str, package: str, teleop: str) -> ModuleType:
    """A device's library, a hardware extra imported only when the device is opened."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"teleop={teleop} needs the {package} library (`pip install {package}`, or "
                        f"robodiff[hardware]), which is not installed") from None


@dataclass(frozen=True)
class TeleopRates:
    """From the hardware YAML's `teleop:` block."""

    speed: float  # m/s of the tool at full deflection (SpaceMouse, gamepad)
    turn_speed: float  # rad/s of pitch and roll at full deflection
    gripper_speed: float  # gripper units/s
    key_step: float  # metres per key press
    key_turn: float  # radians per key press
    key_gripper: float  # gripper units per key press

    @classmethod
    def of(cls, hardware: Any) -> "TeleopRates":
        raw = hardware.raw.get("teleop")
        if not isinstance(raw, dict) or not set(RATE_KEYS) <= set(raw):
            raise UserError(f"{hardware.path}: 'teleop' needs {', '.join(RATE_KEYS)}")
        return cls(**{k: float(raw[k]) for k in RATE_KEYS})


class EndEffectorTeleop(Teleop):
    """Subclasses read their device in `_steps(period_s)`.

    The terminal's episode keys (Enter, x, q) work with every device when there is a terminal."""

    human = True
    device = "arm device"
    help = ""
    needs_terminal = False  # the keyboard; other devices read the terminal's episode keys if there is one

    def __init__(self, robot: Any, action_key: str = "action", terminal_fd: int | None = None) -> None:
        super().__init__()
        kin = getattr(robot, "kinematics", None)
        if kin is None:
            raise UserError(f"teleop={self.device} moves an arm's tool, and {getattr(robot, 'name', 'this robot')} "
                            "has no kinematics (its hardware YAML has no 'kinematics' block)")
        self.kin = kin
        self.rates = TeleopRates.of(kin.hardware)
        self.period_s = 1.0 / float(robot.fps)
        self.action_key = action_key
        self._feature = robot.action_features[action_key]
        names = list(self._feature.names or ())
        self._chain = [names.index(j) for j in kin.names]
        self._gripper = names.index(kin.spec.gripper)
        self._low, self._high = (np.asarray(v, np.float64) for v in robot.action_limits[action_key])
        self.terminal = TerminalKeys(terminal_fd)
        self._use_terminal = False
        self._command: np.ndarray | None = None
        self._pose: np.ndarray | None = None

    @property
    def action_features(self) -> Features:
        return {self.action_key: self._feature}

    def _connect(self) -> None:
        self._use_terminal = self.needs_terminal or TerminalKeys.available(self.terminal.fd)
        if self._use_terminal:
            self.terminal.open(self.device)
        try:
            self._open_device()
        except BaseException:
            self.terminal.close()
            raise

    def _disconnect(self) -> None:
        self.terminal.close()
        self._close_device()

    def _open_device(self) -> None:
        """Find and open the device (a one-line UserError naming what was looked for)."""

    def _close_device(self) -> None:
        pass

    def _steps(self, period_s: float) -> list[np.ndarray]:
        """This tick's moves, each `[dx, dy, dz, dpitch, droll, dgripper]`: one per key press, or
        one deflection held for `period_s`."""
        raise NotImplementedError

    def _held(self, deflection: np.ndarray, period_s: float) -> list[np.ndarray]:
        """The step of a deflection (-1..1 per pose axis, then the gripper) held for `period_s`."""
        rates = np.array([self.rates.speed] * 3 + [self.rates.turn_speed] * 2 + [self.rates.gripper_speed])
        return [np.asarray(deflection, np.float64) * rates * period_s]

    def _keys(self) -> list[bytes]:
        """Keys pressed since the last tick; the episode keys among them become events."""
        if not self._use_terminal:
            return []
        keys = self.terminal.keys()
        self.events += episode_events(keys)
        return keys

    def reset(self, seed: int | None = None) -> None:
        """Forget the target; the next observation's state sets it again."""
        self._command = self._pose = None
        self.events.clear()
        self.terminal.clear()

    def _get_action(self, observation: dict[str, Any] | None) -> dict[str, np.ndarray]:
        if self._command is None:
            if observation is None or "state" not in observation:
                raise UserError(f"teleop={self.device} starts from the arm's state, and the observation has none")
            self._command = np.clip(np.asarray(observation["state"], np.float64), self._low, self._high)
            self._pose = self.kin.forward(self._command[self._chain])
        for step in self._steps(self.period_s):
            self._move(step[:5])
            g = self._gripper
            self._command[g] = np.clip(self._command[g] + step[5], self._low[g], self._high[g])
        return {self.action_key: self._command.astype(np.float32)}

    def _move(self, motion: np.ndarray) -> None:
        """Move the target pose by `motion` if the arm can follow; else by the parts of it that it
        can (pushing along a limit slides along it)."""
        if not np.any(motion):
            return
        parts = [motion] + ([np.where(np.arange(5) == i, motion, 0.0) for i in np.flatnonzero(motion)]
                            if np.count_nonzero(motion) > 1 else [])
        for part in parts:
            result = self.kin.inverse(self._pose + part, self._command[self._chain])
            if result.reached:
                self._pose = self._pose + part
                self._command[self._chain] = result.joints
                if part is motion:
                    return
