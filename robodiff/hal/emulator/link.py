"""`BusEmulator`: a pseudo-terminal that answers like the servos of an arm on a Feetech bus.

`open()` makes a pty and points `link` at it (pyserial opens the pty like a USB adapter; baud
rates are accepted and ignored); `serve()` reads instructions byte for byte and answers them from
the `EmulatedArm`'s servos, in the order real servos answer. Faults a real bus shows can be
switched on: `corrupt_rate` (a status packet with one byte changed), `drop_rate` (a status
packet that never comes), `disconnect_after_s` (the port vanishes: the pty closes and the link
goes), `silent` + `silent_after_s` (one servo stops answering). `wired` says which servos are
on the bus at all (setting an arm up connects one servo at a time).
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from robodiff.errors import UserError
from robodiff.hal.emulator.arm import EmulatedArm
from robodiff.hal.emulator.servo import Servo
from robodiff.hal.motors import feetech_protocol as fp
from robodiff.hal.motors.bus import Packet

POLL_S = 0.002  # physics catches up at least this often while the bus is quiet
# A frame's bytes come back to back (a 250-byte packet takes 2.5 ms at 1 Mbaud): a frame still
# incomplete this long after the last byte came never will be, and a servo forgets it (else a
# stray header would swallow the instructions after it). On the wall clock, whatever the physics'.
FRAME_GAP_S = 0.005


class BusEmulator:
    def __init__(self, arm: EmulatedArm, link: str | os.PathLike, *, corrupt_rate: float = 0.0,
                 drop_rate: float = 0.0, disconnect_after_s: float | None = None, silent: str | None = None,
                 silent_after_s: float = 0.0, seed: int = 0, now: Callable[[], float] = time.monotonic) -> None:
        if silent is not None and silent not in arm.servos:
            raise UserError(f"silent={silent}: not a motor of {arm.hardware.name} ({', '.join(arm.servos)})")
        self.arm = arm
        self.link = Path(link)
        self.corrupt_rate, self.drop_rate = float(corrupt_rate), float(drop_rate)
        self.disconnect_after_s = disconnect_after_s
        self.silent, self.silent_after_s = silent, float(silent_after_s)
        self.wired: set[str] | None = None  # None: every servo of the arm
        self._rng = np.random.default_rng(seed)
        self._now = now
        self._master: int | None = None
        self._slave: int | None = None
        self._buf = bytearray()
        self._last_rx = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at: float | None = None
        # times on the monotonic clock, which every process on the machine shares
        self.stats: dict[str, Any] = {"instructions": 0, "status_packets": 0, "corrupted": 0, "dropped": 0,
                                      "started_t": None, "last_instruction_t": None, "vanished_t": None}

    # ---- the port ------------------------------------------------------------------------------
    def open(self) -> str:
        """Create the pty and the link to it; returns the pty's own path."""
        if self.link.is_symlink():
            self.link.unlink()  # a link left by an emulator that was killed
        elif self.link.exists():
            raise UserError(f"link={self.link}: exists and is not a link (choose another path)")
        self._master, self._slave = os.openpty()
        # Our own slave end stays open and raw, so the master never reads EIO before (or between)
        # clients, and nothing echoes.
        tty.setraw(self._slave)
        pts = os.ttyname(self._slave)
        try:
            self.link.symlink_to(pts)
        except OSError as exc:
            self._close_fds()
            raise UserError(f"link={self.link}: cannot create it ({exc.strerror})") from None
        self.started_at = self.stats["started_t"] = self._now()
        return pts

    def _close_fds(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def close(self) -> None:
        self.stop()
        self._close_fds()
        if self.link.is_symlink():
            self.link.unlink()
        self.arm.close()

    # ---- serving -------------------------------------------------------------------------------
    def serve(self) -> None:
        """Answer instructions until `stop()` or the scheduled disconnect."""
        assert self._master is not None and self.started_at is not None, "open() first"
        while not self._stop.is_set():
            if self.disconnect_after_s is not None and self._now() - self.started_at >= self.disconnect_after_s:
                self._vanish()
                return
            ready, _, _ = select.select([self._master], [], [], POLL_S)
            self.arm.update()
            if ready:
                self._buf += os.read(self._master, 4096)
                self._last_rx = time.monotonic()
                while (instruction := fp.next_instruction(self._buf)) is not None:
                    self._answer(instruction)
            elif self._buf and time.monotonic() - self._last_rx > FRAME_GAP_S:
                self._buf.clear()

    def start(self) -> "BusEmulator":
        """Serve on a thread (tests); `close()` stops it."""
        if self._master is None:
            self.open()
        self._thread = threading.Thread(target=self.serve, name="bus-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
            self._thread = None

    def _vanish(self) -> None:
        """The adapter is unplugged: the port and its device node go."""
        self.stats["vanished_t"] = self._now()
        self._close_fds()
        if self.link.is_symlink():
            self.link.unlink()

    # ---- the servos' side of the protocol ------------------------------------------------------
    def _answering(self) -> dict[int, Servo]:
        silenced = self.silent is not None and self._now() - self.started_at >= self.silent_after_s
        return {s.id: s for name, s in self.arm.servos.items()
                if not (silenced and name == self.silent) and (self.wired is None or name in self.wired)}

    def _answer(self, instruction: Packet) -> None:
        self.stats["instructions"] += 1
        self.stats["last_instruction_t"] = self._now()
        servos = self._answering()
        broadcast = instruction.id == fp.BROADCAST
        addressed = sorted(servos) if broadcast else [instruction.id] if instruction.id in servos else []
        params, replies = instruction.params, []
        if instruction.code == fp.PING:
            replies = [fp.status(i, 0) for i in addressed]
        elif instruction.code == fp.READ and len(params) == 2 and not broadcast:
            replies = [self._status(servos[i], params[0], params[1]) for i in addressed]
        elif instruction.code == fp.WRITE and len(params) >= 2:
            for i in addressed:
                self._write(servos[i], params[0], params[1:])
            replies = [] if broadcast else [fp.status(i, 0) for i in addressed]  # the id it was sent to
        elif instruction.code == fp.SYNC_READ and broadcast and len(params) >= 3:
            replies = [self._status(servos[i], params[0], params[1]) for i in params[2:] if i in servos]
        elif instruction.code == fp.SYNC_WRITE and broadcast and len(params) >= 2 and params[1] > 0:
            address, size, items = params[0], params[1], params[2:]
            for k in range(0, len(items) - size, size + 1):
                if items[k] in servos:
                    self._write(servos[items[k]], address, items[k + 1:k + 1 + size])
        self._send(replies)

    def _status(self, servo: Servo, address: int, size: int) -> bytes:
        self.arm.refresh(servo)
        return fp.status(servo.id, 0, servo.read(address, size))

    def _write(self, servo: Servo, address: int, data: bytes) -> None:
        self.arm.on_write(servo, servo.write(address, data))

    def _send(self, replies: list[bytes]) -> None:
        out = bytearray()
        for reply in replies:
            if self._rng.random() < self.drop_rate:
                self.stats["dropped"] += 1
                continue
            if self._rng.random() < self.corrupt_rate:
                damaged = bytearray(reply)
                damaged[self._rng.integers(len(damaged))] ^= int(self._rng.integers(1, 256))
                reply = bytes(damaged)
                self.stats["corrupted"] += 1
            self.stats["status_packets"] += 1
            out += reply
        if out:
            os.write(self._master, bytes(out))
