"""Physical cameras: a reader thread per camera, so the control loop never waits on one.

The thread grabs frames as the device delivers them, stamps each with the time it arrived
(`time.monotonic()`, the clock observations are stamped with), converts it to RGB and resizes it
to the feature's size (the size the simulated camera renders at, so simulated and physical stores
have the same features), and keeps the newest. `read_latest(max_age_s)` hands it out at once and
raises `StaleFrameError` when it is older than the caller accepts: a camera that stopped delivering
is an error, never a frozen picture.

- `OpenCVCamera`: a device (`index`, or the `path` of a device node) through OpenCV.
- `VideoFileCamera`: a video file played at `fps` on the wall clock and looped, for tests and
  replays (any file OpenCV decodes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from robodiff.errors import UserError
from robodiff.hal.base import Camera, StaleFrameError

FIRST_FRAME_S = 5.0  # a camera that gives no frame within this long after opening is an error


class ThreadedCamera(Camera):
    """Subclasses open the device (`_open`), grab the next frame in BGR, blocking (`_grab`: None
    when the device is gone) and close it (`_close`)."""

    def __init__(self, name: str, width: int, height: int, now: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.name = name
        self._width, self._height = int(width), int(height)
        self._now = now
        self._lock = threading.Lock()
        self._latest: tuple[np.ndarray, float] | None = None
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self._height, self._width, 3)

    def _open(self) -> None:
        raise NotImplementedError

    def _grab(self) -> np.ndarray | None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _connect(self) -> None:
        self._open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._read_frames, name=f"camera {self.name}", daemon=True)
        self._thread.start()
        if not self._first.wait(FIRST_FRAME_S):
            self._disconnect()
            raise UserError(f"{self.name}: no frame within {FIRST_FRAME_S:g} s of opening it")

    def _disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self._close()

    def _read_frames(self) -> None:
        while not self._stop.is_set():
            frame = self._grab()
            stamp = self._now()
            if frame is None:
                return  # the device is gone: frames go stale and the next read says so
            if frame.shape[:2] != (self._height, self._width):
                frame = cv2.resize(frame, (self._width, self._height), interpolation=cv2.INTER_AREA)
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            with self._lock:
                self._latest = (rgb, stamp)
                self.frames += 1
            self._first.set()

    def read_latest(self, max_age_s: float | None = None) -> tuple[np.ndarray, float]:
        """The newest frame (never written to again: no copy needed) and when it arrived."""
        self._require_connected()
        with self._lock:
            latest = self._latest
        if latest is None:
            raise StaleFrameError(f"{self.name}: no frame yet")
        age = self._now() - latest[1]
        if max_age_s is not None and age > max_age_s:
            raise StaleFrameError(f"{self.name}: the newest frame is {age * 1e3:.0f} ms old (at most "
                                  f"{max_age_s * 1e3:.0f} ms accepted): is the camera still connected?")
        return latest


class OpenCVCamera(ThreadedCamera):
    def __init__(self, name: str, source: int | str, width: int, height: int, fps: float,
                 now: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, width, height, now)
        self._source, self._fps = source, float(fps)
        self._capture: cv2.VideoCapture | None = None

    def _open(self) -> None:
        self._capture = cv2.VideoCapture(self._source)
        if not self._capture.isOpened():
            raise UserError(f"{self.name}: cannot open camera {self._source!r} (plugged in? `ls /dev/video*` "
                            f"lists the devices; set robot.cameras.<name>.index=)")
        self._capture.set(cv2.CAP_PROP_FPS, self._fps)

    def _grab(self) -> np.ndarray | None:
        ok, frame = self._capture.read()
        return frame if ok else None

    def _close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class VideoFileCamera(OpenCVCamera):
    """Frame k is delivered at `start + k / fps`; at the end the file starts over."""

    def __init__(self, name: str, path: Path, width: int, height: int, fps: float,
                 now: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if not Path(path).is_file():
            raise UserError(f"{name}: video file {path} not found")
        super().__init__(name, str(path), width, height, fps, now)
        self._sleep = sleep
        self._start = 0.0
        self._k = 0

    def _open(self) -> None:
        super()._open()
        self._start, self._k = self._now(), 0

    def _grab(self) -> np.ndarray | None:
        ok, frame = self._capture.read()
        if not ok:  # the end: play it again
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._capture.read()
            if not ok:
                return None
        self._k += 1
        wait = self._start + self._k / self._fps - self._now()
        if wait > 0:
            self._sleep(wait)
        return frame
