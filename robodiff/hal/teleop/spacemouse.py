"""A 3Dconnexion SpaceMouse (USB HID, through hidapi) moving an arm's tool.

Reports (HARDWARE.md): id 1 holds x, y, z as int16 little-endian at bytes 1-6, and on wireless
models also the rotations at bytes 7-12; id 2 holds the rotations (older wired models); id 3 the
buttons as bits. Full deflection is about 350 counts. Device axes: x right, y towards you, z down,
rotations about them.

Which device axis drives which (the person faces the arm from behind it):
- push the cap away from you / towards you: tool forward / back (+x / -x)
- push it left / right: tool left / right (+y / -y)
- pull it up / press it down: tool up / down (+z / -z)
- tilt it forward / back: tip the tool down / up (pitch)
- tilt it left / right: roll the tool
- left button held: close the gripper; right button held: open it

hidapi is a hardware extra and imported only when a SpaceMouse is opened.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from robodiff.errors import UserError
from robodiff.hal.teleop.end_effector import EndEffectorTeleop, hardware_library

# (USB vendor id, product id) of the models we know, older 3Dconnexion (046d) and newer (256f)
SPACEMICE = ((0x046D, 0xC626), (0x046D, 0xC62B), (0x256F, 0xC62E), (0x256F, 0xC63A), (0x256F, 0xC632),
             (0x256F, 0xC635), (0x256F, 0xC633), (0x256F, 0xC641), (0x256F, 0xC652))
FULL_SCALE = 350.0
DEADZONE = 0.1  # a SpaceMouse at rest reads a few counts
LEFT_BUTTON, RIGHT_BUTTON = 0x1, 0x2


class Reports(Protocol):
    def read(self) -> list[bytes]: ...

    def close(self) -> None: ...


class SpaceMouseState:
    """The six axes (device frame, -1..1) and the buttons, as the reports so far left them."""

    def __init__(self) -> None:
        self.axes = np.zeros(6)
        self.buttons = 0

    @staticmethod
    def _int16s(data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype="<i2").astype(np.float64) / FULL_SCALE

    def apply(self, report: bytes) -> None:
        if not report:
            return
        kind = report[0]
        if kind == 1 and len(report) >= 7:
            self.axes[:3] = self._int16s(report[1:7])
            if len(report) >= 13:
                self.axes[3:] = self._int16s(report[7:13])
        elif kind == 2 and len(report) >= 7:
            self.axes[3:] = self._int16s(report[1:7])
        elif kind == 3 and len(report) >= 2:
            self.buttons = int.from_bytes(report[1:], "little")

    def motion(self) -> np.ndarray:
        """[forward, left, up, tip down, roll] in -1..1, dead zone removed."""
        x, y, z, rx, ry, _ = np.clip(self.axes, -1.0, 1.0)
        command = np.array([-y, -x, -z, rx, ry])
        return np.where(np.abs(command) < DEADZONE, 0.0, command)

    def gripper(self) -> float:
        """+1 open, -1 close, 0 hold."""
        return float(bool(self.buttons & RIGHT_BUTTON)) - float(bool(self.buttons & LEFT_BUTTON))


class HidReports:
    """Every report waiting on an opened hidapi device (non-blocking)."""

    def __init__(self, device: Any) -> None:
        self.device = device

    def read(self) -> list[bytes]:
        out = []
        while data := self.device.read(64):
            out.append(bytes(data))
        return out

    def close(self) -> None:
        self.device.close()


def open_spacemouse() -> HidReports:
    hid = hardware_library("hid", "hidapi", "spacemouse")
    wanted = ", ".join(f"{v:04x}:{p:04x}" for v, p in SPACEMICE)
    for info in hid.enumerate():
        if (info.get("vendor_id"), info.get("product_id")) in SPACEMICE:
            device = hid.device()
            try:
                device.open_path(info["path"])
            except OSError as exc:
                raise UserError(f"teleop=spacemouse: found {info.get('product_string') or 'a SpaceMouse'} but "
                                f"cannot open it ({exc}); this user may need a udev rule for /dev/hidraw*") from None
            device.set_nonblocking(1)
            return HidReports(device)
    raise UserError(f"teleop=spacemouse: no SpaceMouse found (looked for USB HID vendor:product {wanted}); "
                    "is it plugged in, and may this user read /dev/hidraw* (a udev rule)?")


class SpaceMouseTeleop(EndEffectorTeleop):
    """`reports`: an open report source (default: the first SpaceMouse hidapi finds)."""

    name = "spacemouse"
    device = "spacemouse"
    help = ("SpaceMouse: push the cap to move the tool (away from you: forward), pull/press it for "
            "up/down, tilt it forward/back to tip the tool, left/right to roll it; left button closes, "
            "right button opens the gripper; in the terminal, Enter ends the episode, x discards, q stops")

    def __init__(self, robot: Any, action_key: str = "action", reports: Reports | None = None,
                 terminal_fd: int | None = None) -> None:
        super().__init__(robot, action_key, terminal_fd)
        self.reports = reports
        self.state = SpaceMouseState()

    def _open_device(self) -> None:
        if self.reports is None:
            self.reports = open_spacemouse()

    def _close_device(self) -> None:
        if self.reports is not None:
            self.reports.close()

    def _steps(self, period_s: float) -> list[np.ndarray]:
        assert self.reports is not None
        for report in self.reports.read():
            self.state.apply(report)
        self._keys()
        return self._held(np.append(self.state.motion(), self.state.gripper()), period_s)
