"""The terminal keyboard as a teleop device (works over SSH, no display needed).

- `KeyboardTeleop` moves a planar target point (the pushers): arrows/WASD.
- `ArmKeyboardTeleop` moves an arm's tool through its kinematics: one key press, one step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robodiff.errors import UserError
from robodiff.features import Feature, Features
from robodiff.hal.base import Teleop
from robodiff.hal.teleop.end_effector import EndEffectorTeleop
from robodiff.hal.teleop.terminal import EVENT_HELP, EVENTS, TerminalKeys

UP, DOWN, RIGHT, LEFT = (b"\x1b[A", b"\x1bOA"), (b"\x1b[B", b"\x1bOB"), (b"\x1b[C", b"\x1bOC"), (b"\x1b[D", b"\x1bOD")
_PLANAR: dict[bytes, tuple[float, float]] = {
    **{k: (0.0, 1.0) for k in (*UP, b"w")}, **{k: (0.0, -1.0) for k in (*DOWN, b"s")},
    **{k: (1.0, 0.0) for k in (*RIGHT, b"d")}, **{k: (-1.0, 0.0) for k in (*LEFT, b"a")},
}
KEYBOARD_HELP = f"keys: arrows/WASD move the target, {EVENT_HELP}"

# key -> (pose axis [x, y, z, pitch, roll], direction); the person faces the arm from behind it
_ARM: dict[bytes, tuple[int, float]] = {
    **{k: (0, 1.0) for k in (*UP, b"w")}, **{k: (0, -1.0) for k in (*DOWN, b"s")},
    **{k: (1, 1.0) for k in (*LEFT, b"a")}, **{k: (1, -1.0) for k in (*RIGHT, b"d")},
    b"r": (2, 1.0), b"f": (2, -1.0), b"i": (3, 1.0), b"k": (3, -1.0), b"l": (4, 1.0), b"j": (4, -1.0),
}
_GRIPPER = {b"o": (5, 1.0), b"c": (5, -1.0)}
ARM_KEYBOARD_HELP = ("keys: w/s or up/down forward/back, a/d or left/right left/right, r/f up/down, "
                     f"i/k tip down/up, j/l roll, o/c open/close the gripper; {EVENT_HELP}")


class KeyboardTeleop(Teleop):
    """Moves a target point with arrow/WASD keys. Each key press moves the first two action
    dimensions by `step`; the other dimensions hold their start value."""

    name = "keyboard"
    human = True
    help = KEYBOARD_HELP

    def __init__(self, action_feature: Feature, step: float = 0.01,
                 low: np.ndarray | None = None, high: np.ndarray | None = None, fd: int | None = None):
        super().__init__()
        if action_feature.shape[0] < 2:
            raise UserError(f"keyboard teleop moves a 2-D target; this action has shape {list(action_feature.shape)}")
        self._feature = action_feature
        self.step = float(step)
        self.low = None if low is None else np.asarray(low, dtype=np.float32)
        self.high = None if high is None else np.asarray(high, dtype=np.float32)
        self.terminal = TerminalKeys(fd)
        self._target: np.ndarray | None = None

    @property
    def action_features(self) -> Features:
        return {"action": self._feature}

    def _connect(self) -> None:
        self.terminal.open("keyboard")

    def _disconnect(self) -> None:
        self.terminal.close()

    def reset(self, seed: int | None = None) -> None:
        """Forget the target; the next observation's state sets it again."""
        self._target = None
        self.terminal.clear()
        self.events.clear()

    def _get_action(self, observation: dict[str, Any] | None) -> dict[str, np.ndarray]:
        if self._target is None:
            dim = self._feature.shape[0]
            state = None if observation is None else observation.get("state")
            self._target = (np.asarray(state, dtype=np.float32)[:dim].copy() if state is not None
                            and np.size(state) >= dim else np.zeros(dim, dtype=np.float32))
        for key in self.terminal.keys():
            if key in _PLANAR:
                self._target[:2] += np.asarray(_PLANAR[key], np.float32) * self.step
            elif key.lower() in EVENTS:
                self.events.append(EVENTS[key.lower()])
        if self.low is not None or self.high is not None:
            self._target = np.clip(self._target, self.low, self.high).astype(np.float32)
        return {"action": self._target.copy()}


class ArmKeyboardTeleop(EndEffectorTeleop):
    """An arm's tool from the terminal: each press moves it `key_step` metres or `key_turn` radians
    (hold a key: the terminal's key repeat moves it on), o/c open and close the gripper."""

    name = "keyboard"
    device = "keyboard"
    help = ARM_KEYBOARD_HELP
    needs_terminal = True

    def _steps(self, period_s: float) -> list[np.ndarray]:
        sizes = [self.rates.key_step] * 3 + [self.rates.key_turn] * 2 + [self.rates.key_gripper]
        steps = []
        for key in self._keys():
            axis, sign = _ARM.get(key) or _GRIPPER.get(key) or (None, 0.0)
            if axis is not None:
                steps.append(np.where(np.arange(6) == axis, sign * sizes[axis], 0.0))
        return steps
