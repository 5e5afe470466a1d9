"""H.264 mp4 video files: write frames, read them back with their timestamps, resample by time.

Videos we write are yuv420p (the pixel format browsers play). yuv420p needs even sizes, so odd
frames are padded by repeating their last row/column and the true size is kept in the file's
`comment` tag; `read_video`/`iter_video` crop it off again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from robodiff.errors import StoreError
from robodiff.paths import replaced

SIZE_TAG = re.compile(r"robodiff:size=(\d+)x(\d+)")
# Container timestamps are rounded to the stream time base and low-dim timestamps are often
# float32: a frame counts as "at or before" t if it is no more than this after t.
TIME_TOLERANCE_S = 1e-3


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 18,
                codec: str = "libx264") -> Path:
    """Encode uint8 frames (N, H, W, 3 or 1) as a yuv420p mp4 at `fps` (H.264 unless `codec`
    names another encoder, e.g. LeRobot's `libsvtav1`)."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3) or frames.dtype != np.uint8 or len(frames) == 0:
        raise StoreError(f"{path}: frames must be a non-empty uint8 (N, H, W, 3|1) array, got "
                         f"{frames.dtype} {list(frames.shape)}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    _, height, width, _ = frames.shape
    pad_h, pad_w = height % 2, width % 2
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced(path) as tmp, av.open(str(tmp), mode="w") as container:
        container.metadata["comment"] = f"robodiff:size={width}x{height}"
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1_000_000))
        stream.width, stream.height = width + pad_w, height + pad_h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            if pad_h or pad_w:
                frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode())
    return path


def iter_video(path: str | os.PathLike) -> Iterator[tuple[np.ndarray, float]]:
    """Decode frame by frame: yields (uint8 HWC RGB frame, presentation time in seconds)."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such video file")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: cannot open video ({exc})") from None
    try:
        if not container.streams.video:
            raise StoreError(f"{path}: has no video stream (truncated, or not a video file)")
        stream = container.streams.video[0]
        crop = _true_size(container)
        index = 0
        rate = stream.average_rate or stream.guessed_rate
        try:
            for frame in container.decode(stream):
                if frame.pts is not None:
                    t = float(frame.pts * (frame.time_base or stream.time_base))
                else:  # raw streams without timestamps: frame index over the nominal rate
                    t = index / float(rate) if rate else float(index)
                image = frame.to_ndarray(format="rgb24")
                if crop is not None:
                    image = image[:crop[1], :crop[0]]
                index += 1
                yield image, t
        except av.FFmpegError as exc:
            raise StoreError(f"{path}: corrupt video after frame {index} ({exc})") from None
        if index == 0:
            raise StoreError(f"{path}: video has no decodable frames")
    finally:
        container.close()


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """All frames (N, H, W, 3) uint8 and their timestamps (N,) float64 seconds."""
    frames, times = [], []
    for frame, t in iter_video(path):
        frames.append(frame)
        times.append(t)
    return np.stack(frames), np.asarray(times, dtype=np.float64)


def first_frame(path: str | os.PathLike) -> np.ndarray:
    """Decodes one frame only (to learn a camera's image shape)."""
    frames = iter_video(path)
    try:
        return next(frames)[0]  # iter_video raises StoreError rather than stop empty-handed
    finally:
        frames.close()


def _true_size(container: av.container.InputContainer) -> tuple[int, int] | None:
    match = SIZE_TAG.search(container.metadata.get("comment", ""))
    return (int(match.group(1)), int(match.group(2))) if match else None


class FrameSampler:
    """Picks, for increasing query times, the last frame at or before each time, streaming.

    Query times are in the video's own clock. One sampler can serve consecutive episodes stored in
    one file (LeRobot v3); querying a time before the current position reopens the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._restart()

    def _restart(self) -> None:
        self._frames = iter_video(self.path)
        self._current: tuple[np.ndarray, float] | None = None
        self._next: tuple[np.ndarray, float] | None = next(self._frames, None)
        self._period = 0.0

    def _advance(self) -> None:
        self._current, self._next = self._next, next(self._frames, None)
        if self._current is not None and self._next is not None:
            self._period = self._next[1] - self._current[1]

    def close(self) -> None:
        self._frames.close()

    def __enter__(self) -> FrameSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames_at(self, times: np.ndarray, what: str = "the low-dim data") -> np.ndarray:
        times = np.asarray(times, dtype=np.float64)
        if self._current is not None and len(times) and times[0] < self._current[1] - TIME_TOLERANCE_S:
            self.close()
            self._restart()
        out = []
        for t in times:
            while self._next is not None and self._next[1] <= t + TIME_TOLERANCE_S:
                self._advance()
            if self._current is None:
                raise StoreError(f"{self.path}: video starts at {self._next[1]:.3f} s, after "
                                 f"{what} at {t:.3f} s")
            if self._next is None and t > self._current[1] + self._period + TIME_TOLERANCE_S:
                raise StoreError(f"{self.path}: video is shorter than {what} (last frame at "
                                 f"{self._current[1]:.3f} s, data needs {t:.3f} s)")
            out.append(self._current[0])
        return np.stack(out)
