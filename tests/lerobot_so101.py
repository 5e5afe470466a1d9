"""Small LeRobot-format SO-101 datasets (v2.1 and v3.0 layouts, either unit convention), written
with pyarrow and the video writer as LeRobot lays them out: six `<joint>.pos` values for state and
action, cameras `top` and `wrist` (videos), robot_type `so101_follower`, 30 fps.

The joint values are one radians trajectory expressed in the requested convention through
hardware/so101.yaml's mapping, so the two conventions hold the same motion in different numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from importer_fixtures import _table, grey_frames
from robodiff.data.video import write_video
from robodiff.hal.hardware import load_hardware

JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
CAMERAS = ("top", "wrist")
IMAGE_HW = (96, 128)  # the so101 tasks' camera size, so an import trains for them unchanged


def radians_trajectory(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 6) smooth joint motion inside the SO-101's ranges."""
    t = np.arange(n)[:, None] / 30.0
    phase = rng.uniform(0, 2 * np.pi, 6)
    middle = np.array([0.0, -0.4, 0.5, 1.2, 0.0, 0.6])
    return middle + np.array([0.6, 0.3, 0.3, 0.2, 0.8, 0.5]) * np.sin(2 * np.pi * 0.5 * t + phase)


def _info(version: str, fps: float, total: int) -> dict:
    joints = {"dtype": "float32", "shape": [6], "names": [f"{j}.pos" for j in JOINTS]}
    video = {"dtype": "video", "shape": [*IMAGE_HW, 3], "names": ["height", "width", "channels"]}
    scalar = {"dtype": "int64", "shape": [1], "names": None}
    return {"codebase_version": version, "robot_type": "so101_follower", "fps": fps, "total_episodes": total,
            "chunks_size": 1000,
            "features": {"action": joints, "observation.state": joints,
                         **{f"observation.images.{c}": video for c in CAMERAS},
                         "timestamp": {"dtype": "float32", "shape": [1], "names": None},
                         "frame_index": scalar, "episode_index": scalar, "index": scalar, "task_index": scalar}}


def make_lerobot_so101(root: Path, version: str, units: str, lengths: tuple[int, ...] = (14, 10),
                       fps: float = 30.0, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Write the dataset under `root`; returns each episode's `state` and `action` as written."""
    mapping = load_hardware("so101").with_units(units).units
    rng = np.random.default_rng(seed)
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_info(version, fps, len(lengths))))
    episodes, tables, meta, start = [], [], [], 0
    for k, n in enumerate(lengths):
        radians = radians_trajectory(rng, n + 1)
        state = mapping.to_units(radians[:-1]).astype(np.float32)
        action = mapping.to_units(radians[1:]).astype(np.float32)  # the next position, as teleop records
        rows = {"action": action, "observation.state": state,
                "timestamp": (np.arange(n) / fps).astype(np.float32), "frame_index": np.arange(n),
                "episode_index": np.full(n, k), "index": start + np.arange(n), "task_index": np.zeros(n, np.int64)}
        episodes.append({"state": state, "action": action})
        if version == "v2.1":
            path = root / "data" / "chunk-000" / f"episode_{k:06d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(_table(rows), path)
            for camera in CAMERAS:
                write_video(root / "videos" / "chunk-000" / f"observation.images.{camera}" / f"episode_{k:06d}.mp4",
                            grey_frames(n, IMAGE_HW), fps)
        else:
            tables.append(_table(rows))
            meta.append({"episode_index": k, "length": n, "data/chunk_index": 0, "data/file_index": 0,
                         "dataset_from_index": start, "dataset_to_index": start + n,
                         **{f"videos/observation.images.{c}/{key}": value for c in CAMERAS
                            for key, value in (("chunk_index", 0), ("file_index", 0),
                                               ("from_timestamp", start / fps), ("to_timestamp", (start + n) / fps))}})
        start += n
    if version == "v2.1":
        lines = [json.dumps({"episode_index": k, "tasks": ["pick the cube"], "length": n})
                 for k, n in enumerate(lengths)]
        (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    else:  # every episode in one data file and one video file per camera, as v3 packs them
        path = root / "data" / "chunk-000" / "file-000.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(pa.concat_tables(tables), path)
        frames = np.concatenate([grey_frames(n, IMAGE_HW) for n in lengths])
        for camera in CAMERAS:
            write_video(root / "videos" / f"observation.images.{camera}" / "chunk-000" / "file-000.mp4",
                        frames, fps, codec="libsvtav1")
        path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(meta), path)
    return episodes
