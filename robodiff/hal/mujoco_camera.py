"""Offscreen MuJoCo cameras as `Camera`s (mujoco.Renderer; headless through EGL).

A simulated camera renders on demand from the simulation's current state instead of running a
reader thread: the frame is therefore never older than the state it shows, `read_latest` returns
without waiting on a device, and rendering costs nothing when nobody reads images.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from robodiff.hal.gl import select_headless_gl  # noqa: E402

select_headless_gl()
import mujoco  # noqa: E402  (MUJOCO_GL must be set before the import picks a GL backend)

from robodiff.errors import UserError  # noqa: E402
from robodiff.hal.base import Camera, StaleFrameError  # noqa: E402

# (state to render, its timestamp, the robot's clock now); the robot holds its lock while we render
StateSource = Callable[[], tuple[mujoco.MjData, float, float]]


class MujocoCamera(Camera):
    def __init__(self, model: mujoco.MjModel, source: StateSource, camera: str, width: int,
                 height: int, name: str | None = None) -> None:
        super().__init__()
        if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            known = [model.camera(i).name for i in range(model.ncam)]
            raise UserError(f"camera '{camera}' is not in the MJCF scene (cameras: {', '.join(known) or 'none'})")
        if width > model.vis.global_.offwidth or height > model.vis.global_.offheight:
            raise UserError(f"camera '{camera}': {width}x{height} exceeds the scene's offscreen buffer "
                            f"({model.vis.global_.offwidth}x{model.vis.global_.offheight}; "
                            "raise <visual><global offwidth/offheight> in the MJCF)")
        self.name = name or f"mujoco camera '{camera}'"
        self._model = model
        self._source = source
        self._camera = camera
        self._width, self._height = int(width), int(height)
        self._renderer: mujoco.Renderer | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self._height, self._width, 3)

    def _connect(self) -> None:
        self._renderer = mujoco.Renderer(self._model, self._height, self._width)

    def _disconnect(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def read_latest(self, max_age_s: float | None = None) -> tuple[np.ndarray, float]:
        self._require_connected()
        assert self._renderer is not None
        data, stamp, now = self._source()
        if max_age_s is not None and now - stamp > max_age_s:
            raise StaleFrameError(f"{self.name}: frame is {now - stamp:.3f} s old (max {max_age_s} s)")
        self._renderer.update_scene(data, self._camera)
        return self._renderer.render().copy(), stamp
