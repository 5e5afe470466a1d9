"""A gamepad (Linux evdev: Xbox, PlayStation and most USB/Bluetooth pads) moving an arm's tool.

Events are the kernel's `struct input_event` (timeval, u16 type, u16 code, s32 value), read from
the device file and decoded here; axis ranges come from the device (EVIOCGABS: value, min, max,
fuzz, flat). Codes from HARDWARE.md.

Which control drives which (the person faces the arm from behind it):
- left stick up / down: tool forward / back (+x / -x); left / right: tool left / right (+y / -y)
- right stick up / down: tool up / down (+z / -z); left / right: roll the tool
- d-pad down / up: tip the tool down / up (pitch)
- right trigger: open the gripper; left trigger: close it (the harder, the faster)
- A (south): end the episode and keep it; B (east): discard it; Select/Back: stop recording

python-evdev is a hardware extra, imported only when a gamepad is opened (to find it and read its
axis ranges).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from robodiff.errors import UserError
from robodiff.hal.teleop.end_effector import EndEffectorTeleop, hardware_library

EV_KEY, EV_ABS = 0x01, 0x03
ABS_X, ABS_Y, ABS_Z, ABS_RX, ABS_RY, ABS_RZ, ABS_HAT0X, ABS_HAT0Y = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x10, 0x11
BTN_SOUTH, BTN_EAST, BTN_NORTH, BTN_WEST = 0x130, 0x131, 0x133, 0x134
BTN_TL, BTN_TR, BTN_SELECT, BTN_START = 0x136, 0x137, 0x13A, 0x13B
# struct input_event on 64-bit Linux: struct timeval (two longs), type, code, value
INPUT_EVENT = struct.Struct("llHHi")
BUTTON_EVENTS = {BTN_SOUTH: "done", BTN_EAST: "discard", BTN_SELECT: "quit"}


@dataclass(frozen=True)
class AxisRange:
    """An absolute axis's range and dead zone (the kernel's input_absinfo min, max, flat)."""

    low: int
    high: int
    flat: int = 0

    def normalize(self, value: int) -> float:
        """-1..1 for a centred axis (sticks, d-pad), 0..1 for one starting at its low end (triggers)."""
        if self.low < 0:
            middle, half = (self.high + self.low) / 2, (self.high - self.low) / 2
            offset = value - middle
            return 0.0 if abs(offset) <= self.flat else float(np.clip(offset / half, -1.0, 1.0))
        span = self.high - self.low
        return 0.0 if value - self.low <= self.flat else float(np.clip((value - self.low) / span, 0.0, 1.0))


def decode_events(raw: bytes) -> list[tuple[int, int, int]]:
    """(type, code, value) of every whole `struct input_event` in `raw`."""
    size = INPUT_EVENT.size
    return [INPUT_EVENT.unpack_from(raw, i)[2:] for i in range(0, len(raw) - size + 1, size)]


class Events(Protocol):
    ranges: dict[int, AxisRange]

    def read(self) -> bytes: ...

    def close(self) -> None: ...


class GamepadState:
    """Axes (normalized) and button presses, as the events so far left them."""

    def __init__(self, ranges: dict[int, AxisRange]) -> None:
        self.ranges = ranges
        self.axes: dict[int, float] = {}
        self.pressed: list[int] = []  # buttons pressed since the last `take_presses`

    def apply(self, kind: int, code: int, value: int) -> None:
        if kind == EV_ABS and code in self.ranges:
            self.axes[code] = self.ranges[code].normalize(value)
        elif kind == EV_KEY and value == 1:
            self.pressed.append(code)

    def take_presses(self) -> list[int]:
        pressed, self.pressed = self.pressed, []
        return pressed

    def motion(self) -> np.ndarray:
        """[forward, left, up, tip down, roll] in -1..1."""
        a = self.axes.get
        return np.array([-a(ABS_Y, 0.0), -a(ABS_X, 0.0), -a(ABS_RY, 0.0), a(ABS_HAT0Y, 0.0), a(ABS_RX, 0.0)])

    def gripper(self) -> float:
        """-1 (close) .. 1 (open): right trigger opens, left trigger closes."""
        return self.axes.get(ABS_RZ, 0.0) - self.axes.get(ABS_Z, 0.0)


class EvdevEvents:
    """The raw event bytes waiting on an opened evdev device (its file is non-blocking)."""

    def __init__(self, device: Any, ranges: dict[int, AxisRange]) -> None:
        self.device = device
        self.ranges = ranges

    def read(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(self.device.fd, INPUT_EVENT.size * 64)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.device.close()


def open_gamepad() -> EvdevEvents:
    evdev = hardware_library("evdev", "evdev", "gamepad")
    for path in evdev.list_devices():
        device = evdev.InputDevice(path)
        caps = device.capabilities(absinfo=True)
        axes = dict(caps.get(EV_ABS, []))
        if ABS_X in axes and ABS_Y in axes and BTN_SOUTH in caps.get(EV_KEY, []):
            return EvdevEvents(device, {code: AxisRange(info.min, info.max, info.flat) for code, info in axes.items()})
        device.close()
    raise UserError("teleop=gamepad: no gamepad found among /dev/input/event* (looked for a device with "
                    "sticks ABS_X/ABS_Y and button BTN_SOUTH); is it connected, and is this user in the "
                    "`input` group?")


class GamepadTeleop(EndEffectorTeleop):
    """`source`: an open event source (default: the first gamepad evdev finds)."""

    name = "gamepad"
    device = "gamepad"
    help = ("gamepad: left stick moves the tool forward/back/left/right, right stick up/down and roll, "
            "d-pad tips it; right trigger opens, left trigger closes the gripper; A ends the episode, "
            "B discards it, Back stops (or Enter / x / q in the terminal)")

    def __init__(self, robot: Any, action_key: str = "action", source: Events | None = None,
                 terminal_fd: int | None = None) -> None:
        super().__init__(robot, action_key, terminal_fd)
        self.source = source
        self.state: GamepadState | None = None

    def _open_device(self) -> None:
        if self.source is None:
            self.source = open_gamepad()
        self.state = GamepadState(self.source.ranges)

    def _close_device(self) -> None:
        if self.source is not None:
            self.source.close()

    def _steps(self, period_s: float) -> list[np.ndarray]:
        assert self.source is not None and self.state is not None
        for kind, code, value in decode_events(self.source.read()):
            self.state.apply(kind, code, value)
        self.events += [BUTTON_EVENTS[b] for b in self.state.take_presses() if b in BUTTON_EVENTS]
        self._keys()
        return self._held(np.append(self.state.motion(), self.state.gripper()), period_s)
