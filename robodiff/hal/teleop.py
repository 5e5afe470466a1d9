"""Teleop devices: where `robodiff collect` gets a person's actions.

The terminal keyboard works today; SpaceMouse, gamepad and leader arm keep their names in hal's
registry and say that they come with the hardware extras. A simulated task's scripted expert is
a teleop too, registered by `robodiff.sim`.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import tty
from collections.abc import Callable
from typing import Any

import numpy as np

from robodiff.errors import UserError
from robodiff.features import Feature, Features
from robodiff.hal.base import Teleop, robot_limits


# Terminal key codes: arrows arrive as escape sequences (CSI or SS3 form), WASD as letters.
_MOVES: dict[bytes, tuple[float, float]] = {
    b"\x1b[A": (0.0, 1.0), b"\x1bOA": (0.0, 1.0), b"w": (0.0, 1.0),
    b"\x1b[B": (0.0, -1.0), b"\x1bOB": (0.0, -1.0), b"s": (0.0, -1.0),
    b"\x1b[C": (1.0, 0.0), b"\x1bOC": (1.0, 0.0), b"d": (1.0, 0.0),
    b"\x1b[D": (-1.0, 0.0), b"\x1bOD": (-1.0, 0.0), b"a": (-1.0, 0.0),
}
_EVENTS: dict[bytes, str] = {b"\n": "done", b"\r": "done", b" ": "done", b"x": "discard",
                             b"\x7f": "discard", b"q": "quit"}
KEYBOARD_HELP = ("keys: arrows/WASD move the target, Enter/Space end the episode (keep), "
                 "x/Backspace discard it, q stop recording")


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):  # replaced or closed stdin (pytest, daemons)
        return None


class KeyboardTeleop(Teleop):
    """Moves the target point with arrow/WASD keys read from the terminal.

    Reads stdin in cbreak mode with termios + select, so it works over SSH and on any console with
    no X/Wayland (keyboard libraries that hook the display server are dead there). Each key press
    moves the first two action dimensions by `step`; the other dimensions hold their start value.
    """

    name = "keyboard"
    human = True

    def __init__(self, action_feature: Feature, step: float = 0.01,
                 low: np.ndarray | None = None, high: np.ndarray | None = None, fd: int | None = None):
        super().__init__()
        if action_feature.shape[0] < 2:
            raise UserError(f"keyboard teleop moves a 2-D target; this action has shape {list(action_feature.shape)}")
        self._feature = action_feature
        self.step = float(step)
        self.low = None if low is None else np.asarray(low, dtype=np.float32)
        self.high = None if high is None else np.asarray(high, dtype=np.float32)
        self._fd = fd
        self._saved_attrs: list[Any] | None = None
        self._pending = b""
        self._target: np.ndarray | None = None
        self.events: list[str] = []

    @property
    def action_features(self) -> Features:
        return {"action": self._feature}

    def _connect(self) -> None:
        fd = self._fd if self._fd is not None else _stdin_fd()
        if fd is None or not os.isatty(fd):
            raise UserError("teleop=keyboard reads keys from an interactive terminal, but stdin is not "
                            "a TTY (run it in a terminal, e.g. `ssh -t`, not from a pipe or a job)")
        self._fd = fd
        self._saved_attrs = termios.tcgetattr(fd)
        # cbreak, not raw: Ctrl-C still raises KeyboardInterrupt, so an interrupted recording
        # loses only the current episode and the terminal is restored on the way out.
        tty.setcbreak(fd)

    def _disconnect(self) -> None:
        if self._fd is not None and self._saved_attrs is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved_attrs)
        self._saved_attrs = None

    def reset(self, seed: int | None = None) -> None:
        """Forget the target; the next observation's state sets it again."""
        self._target = None
        self._pending = b""
        self.events.clear()

    def pop_event(self) -> str | None:
        return self.events.pop(0) if self.events else None

    def _read_keys(self) -> None:
        assert self._fd is not None
        while select.select([self._fd], [], [], 0)[0]:
            chunk = os.read(self._fd, 64)
            if not chunk:
                break
            self._pending += chunk
        self._consume()

    def _consume(self) -> None:
        buf = self._pending
        while buf:
            for code, (dx, dy) in _MOVES.items():
                if buf.startswith(code):
                    assert self._target is not None
                    self._target[0] += dx * self.step
                    self._target[1] += dy * self.step
                    buf = buf[len(code):]
                    break
            else:
                if buf[:1] == b"\x1b" and len(buf) < 3:
                    break  # an escape sequence split across reads: wait for the rest
                event = _EVENTS.get(buf[:1].lower())
                if event:
                    self.events.append(event)
                buf = buf[1:]
        self._pending = buf

    def _get_action(self, observation: dict[str, Any] | None) -> dict[str, np.ndarray]:
        if self._target is None:
            dim = self._feature.shape[0]
            state = None if observation is None else observation.get("state")
            self._target = (np.asarray(state, dtype=np.float32)[:dim].copy() if state is not None
                            and np.size(state) >= dim else np.zeros(dim, dtype=np.float32))
        self._read_keys()
        if self.low is not None or self.high is not None:
            self._target = np.clip(self._target, self.low, self.high).astype(np.float32)
        return {"action": self._target.copy()}


def hardware_extra(name: str) -> Callable[..., Teleop]:
    def unavailable(*_: Any, **__: Any) -> Teleop:
        raise UserError(f"teleop={name} comes with the hardware extras (`pip install robodiff[hardware]`), "
                        f"which are not available yet; use teleop=keyboard or teleop=expert")
    return unavailable


def keyboard(robot: Any, action_key: str) -> Teleop:
    """The keyboard driving `robot`'s action, inside the limits it publishes."""
    limits = robot_limits(robot, action_key)
    low = np.asarray(limits["low"], np.float32) if limits else None
    high = np.asarray(limits["high"], np.float32) if limits else None
    # One key press moves the target 2 % of the workspace: a few presses per block width.
    step = float(0.02 * np.min(high[:2] - low[:2])) if low is not None and low.size >= 2 else 0.01
    return KeyboardTeleop(robot.action_features[action_key], step=step, low=low, high=high)


TELEOPS: dict[str, Callable[..., Teleop]] = {
    "keyboard": keyboard,
    "spacemouse": hardware_extra("spacemouse"),
    "gamepad": hardware_extra("gamepad"),
    "leader": hardware_extra("leader"),
}
