"""Key presses from the terminal: stdin in cbreak mode, read with termios + select.

Works over SSH and on any console with no X/Wayland (keyboard libraries that hook the display
server are dead there). Arrow keys arrive as escape sequences (CSI `ESC [ A` or SS3 `ESC O A`),
possibly split across reads; `keys()` hands out whole keys only.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import tty
from typing import Any

from robodiff.errors import UserError

# Keys that end an episode, the same on every device that reads the terminal.
EVENTS: dict[bytes, str] = {b"\n": "done", b"\r": "done", b" ": "done", b"x": "discard",
                            b"\x7f": "discard", b"q": "quit"}
EVENT_HELP = "Enter/Space end the episode (keep), x/Backspace discard it, q stop recording"


def episode_events(keys: list[bytes]) -> list[str]:
    """The episode events among key presses (`done`, `discard`, `quit`)."""
    return [EVENTS[k.lower()] for k in keys if k.lower() in EVENTS]


def stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):  # replaced or closed stdin (pytest, daemons)
        return None


class TerminalKeys:
    """`open()` puts the terminal `fd` (default stdin) in cbreak mode, `keys()` returns the keys
    pressed since the last call, `close()` restores the terminal."""

    def __init__(self, fd: int | None = None) -> None:
        self.fd = fd
        self._saved: list[Any] | None = None
        self._pending = b""

    @staticmethod
    def available(fd: int | None = None) -> bool:
        fd = stdin_fd() if fd is None else fd
        return fd is not None and os.isatty(fd)

    def open(self, device: str) -> None:
        fd = self.fd if self.fd is not None else stdin_fd()
        if fd is None or not os.isatty(fd):
            raise UserError(f"teleop={device} reads keys from an interactive terminal, but stdin is not "
                            "a TTY (run it in a terminal, e.g. `ssh -t`, not from a pipe or a job)")
        self.fd = fd
        self._saved = termios.tcgetattr(fd)
        # cbreak, not raw: Ctrl-C still raises KeyboardInterrupt, so an interrupted recording
        # loses only the current episode and the terminal is restored on the way out.
        tty.setcbreak(fd)

    def close(self) -> None:
        if self.fd is not None and self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        self._saved = None

    def clear(self) -> None:
        self._pending = b""

    def keys(self) -> list[bytes]:
        assert self.fd is not None
        while select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 64)
            if not chunk:
                break
            self._pending += chunk
        out, buf = [], self._pending
        while buf:
            if buf[:1] == b"\x1b":
                if len(buf) < 3:
                    break  # an escape sequence split across reads: wait for the rest
                out.append(buf[:3])
                buf = buf[3:]
            else:
                out.append(buf[:1])
                buf = buf[1:]
        self._pending = buf
        return out
