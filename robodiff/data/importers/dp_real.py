"""Diffusion-Policy real-robot folders: `replay_buffer.zarr` + `videos/<episode>/<camera>.mp4`.

Video frames are resampled onto the low-dim timestamps: each step takes the last frame at or
before it, with the video's clock starting at the episode's first timestamp.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import numpy as np

from robodiff.data.importers import dp_zarr
from robodiff.data.importers.source import Episode, Source, check_timestamps
from robodiff.data.video import FrameSampler, first_frame
from robodiff.errors import UserError
from robodiff.features import Feature


def camera_feature_name(camera: str) -> str:
    # The reference code names camera i `camera_i` in its shape_meta.
    return f"camera_{camera}" if camera.isdigit() else camera


def read(src: Path) -> Source:
    buffer = dp_zarr.read(src / "replay_buffer.zarr")
    if "timestamp" not in buffer.features:
        raise UserError(f"{src / 'replay_buffer.zarr'}: no data/timestamp to align the videos with")
    first = src / "videos" / "0"
    cameras = sorted((p.stem for p in first.glob("*.mp4")), key=_natural)
    if not cameras:
        raise UserError(f"{first}: no <camera>.mp4 videos for episode 0")
    features = dict(buffer.features)
    for camera in cameras:
        name = camera_feature_name(camera)
        if name in features:
            raise UserError(f"{first / (camera + '.mp4')}: camera '{name}' clashes with data/{name}")
        features[name] = Feature("image", first_frame(first / f"{camera}.mp4").shape, "uint8")
    return Source(origin=str(src), features=features, episodes=_episodes(src, buffer, cameras),
                  total=buffer.total, fps=buffer.fps, task=buffer.task, robot=buffer.robot)


def _episodes(src: Path, buffer: Source, cameras: list[str]) -> Generator[Episode, None, None]:
    try:
        for k, episode in enumerate(buffer.episodes):
            times = episode.data["timestamp"].astype(np.float64)
            check_timestamps(times, f"{src / 'replay_buffer.zarr'} episode {k}")  # before videos are matched
            relative = times - times[0]
            for camera in cameras:
                path = src / "videos" / str(k) / f"{camera}.mp4"
                if not path.is_file():
                    raise UserError(f"{path}: missing (every episode needs a video per camera)")
                with FrameSampler(path) as sampler:
                    episode.data[camera_feature_name(camera)] = sampler.frames_at(
                        relative, f"episode {k}'s timestamps")
            yield episode
    finally:
        buffer.episodes.close()


def _natural(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 62, name)
