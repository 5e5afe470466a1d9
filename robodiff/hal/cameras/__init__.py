"""Physical cameras (a reader thread each): OpenCV devices and video files; `make_camera` builds one
from a hardware YAML's camera entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robodiff.hal.cameras.reader import OpenCVCamera, ThreadedCamera, VideoFileCamera

__all__ = ["OpenCVCamera", "ThreadedCamera", "VideoFileCamera", "make_camera"]


def make_camera(name: str, spec: dict[str, Any]) -> ThreadedCamera:
    """`path` of a video file: that file, looped at `fps`; a `path` under /dev or an `index`: the
    OpenCV device."""
    path = spec.get("path")
    size = (int(spec["width"]), int(spec["height"]))
    if path is not None and not str(path).startswith("/dev/"):
        return VideoFileCamera(name, Path(path), *size, fps=float(spec["fps"]))
    return OpenCVCamera(name, str(path) if path is not None else int(spec["index"]), *size, fps=float(spec["fps"]))
