"""Builders of small source datasets in every importable format, written with the formats' own
libraries (plain zarr, h5py, pyarrow, the video writer) so the importers are tested on real files.

Video frames are solid grey with level GREY_STEP * frame_index, so a decoded frame tells which
source frame it was even after lossy compression (`frame_index_of`).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from robodiff.data.video import write_video

GREY_STEP = 8
IMAGE_HW = (12, 16)


def grey_frames(n: int, hw: tuple[int, int] = IMAGE_HW) -> np.ndarray:
    assert n * GREY_STEP < 256, "too many frames for distinct grey levels"
    return np.stack([np.full((*hw, 3), GREY_STEP * i, np.uint8) for i in range(n)])


def frame_index_of(frames: np.ndarray) -> np.ndarray:
    """The source frame index encoded in each decoded frame's grey level."""
    return np.rint(frames.reshape(len(frames), -1).mean(axis=1) / GREY_STEP).astype(int)


def random_episode(rng: np.random.Generator, length: int,
                   image_dtype: type = np.uint8) -> dict[str, np.ndarray]:
    image = rng.integers(0, 256, (length, *IMAGE_HW, 3)).astype(image_dtype)
    return {"img": image, "state": rng.normal(size=(length, 5)).astype(np.float32),
            "action": rng.normal(size=(length, 2)).astype(np.float32)}


def make_dp_zarr(path: Path, zarr_format: int = 2, lengths: tuple[int, ...] = (5, 7, 4),
                 float_images: bool = True, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The reference layout with plain zarr calls; `path` ending in .zip makes a .zarr.zip."""
    rng = np.random.default_rng(seed)
    episodes = [random_episode(rng, n, np.float32 if float_images else np.uint8) for n in lengths]
    store: zarr.abc.store.Store | str = str(path)
    if path.name.endswith(".zip"):
        store = zarr.storage.ZipStore(str(path), mode="w")
    root = zarr.open_group(store, mode="w", zarr_format=zarr_format)
    for key in episodes[0]:
        arr = np.concatenate([ep[key] for ep in episodes])
        chunks = (1, *arr.shape[1:]) if key == "img" else arr.shape
        root.create_array(f"data/{key}", data=arr, chunks=chunks)
    root.create_array("meta/episode_ends", data=np.cumsum(lengths).astype(np.int64), chunks=(len(lengths),))
    if isinstance(store, zarr.storage.ZipStore):
        store.close()
    return episodes


def make_dp_real(root: Path, lengths: tuple[int, ...] = (10, 8), video_fps: float = 30.0,
                 lowdim_fps: float = 10.0, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`replay_buffer.zarr` (with jittered wall-clock timestamps) + `videos/<k>/<cam>.mp4`."""
    rng = np.random.default_rng(seed)
    episodes, t0 = [], 1_700_000_000.0
    for k, n in enumerate(lengths):
        jitter = rng.uniform(0, 0.3 / lowdim_fps, n)
        jitter[0] = 0.0
        ts = t0 + np.arange(n) / lowdim_fps + jitter
        episodes.append({"timestamp": ts, "robot_eef_pose": rng.normal(size=(n, 6)).astype(np.float32),
                         "action": rng.normal(size=(n, 6)).astype(np.float32)})
        duration = ts[-1] - ts[0] + 1 / lowdim_fps
        n_video = int(np.ceil(duration * video_fps))
        for camera in ("0", "1"):
            write_video(root / "videos" / str(k) / f"{camera}.mp4", grey_frames(n_video), video_fps)
        t0 += 100.0
    group = zarr.open_group(str(root / "replay_buffer.zarr"), mode="w", zarr_format=2)
    for key in episodes[0]:
        group.create_array(f"data/{key}", data=np.concatenate([ep[key] for ep in episodes]))
    group.create_array("meta/episode_ends", data=np.cumsum(lengths).astype(np.int64))
    return episodes


def make_demo_folder(root: Path, lengths: tuple[int, ...] = (6, 9), fps: float = 5.0,
                     with_timestamp: bool = False, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`episode_<n>/steps.npz` + `front.mp4` (grey-coded) + `wrist/*.png` (random, lossless)."""
    rng = np.random.default_rng(seed)
    (root).mkdir(parents=True, exist_ok=True)
    (root / "meta.json").write_text(json.dumps({"fps": fps, "task": "demo_task"}))
    episodes = []
    for k, n in enumerate(lengths):
        folder = root / f"episode_{k}"
        folder.mkdir()
        steps = {"action": rng.normal(size=(n, 3)).astype(np.float32),
                 "joints": rng.normal(size=(n, 4)).astype(np.float32)}
        if with_timestamp:
            steps["timestamp"] = 50.0 + np.arange(n) / fps
        np.savez(folder / "steps.npz", **steps)
        write_video(folder / "front.mp4", grey_frames(n), fps)
        wrist = rng.integers(0, 256, (n, 10, 14, 3), dtype=np.uint8)
        (folder / "wrist").mkdir()
        for i, image in enumerate(wrist):
            cv2.imwrite(str(folder / "wrist" / f"{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        episodes.append({**steps, "wrist": wrist})
    return episodes


def make_robomimic(path: Path, lengths: tuple[int, ...] = (4, 6, 3),
                   seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Demos written out of numeric order (demo_10 after demo_2) to test the ordering."""
    rng = np.random.default_rng(seed)
    names = [f"demo_{i}" for i in (0, 2, 10)][: len(lengths)]
    episodes = []
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "env_kwargs": {"control_freq": 20}})
        for name, n in reversed(list(zip(names, lengths))):
            demo = data.create_group(name)
            ep = {"action": rng.normal(size=(n, 7)),
                  "agentview": rng.integers(0, 256, (n, *IMAGE_HW, 3), dtype=np.uint8),
                  "robot0_eef_pos": rng.normal(size=(n, 3))}
            demo.create_dataset("actions", data=ep["action"])
            demo.create_dataset("obs/agentview_image", data=ep["agentview"])
            demo.create_dataset("obs/robot0_eef_pos", data=ep["robot0_eef_pos"])
            demo.attrs["num_samples"] = n
            episodes.append(ep)
    return list(reversed(episodes))


def _lerobot_info(version: str, fps: float, total: int) -> dict:
    info = {"codebase_version": version, "fps": fps, "total_episodes": total, "chunks_size": 1000,
            "robot_type": "so100",
            "features": {
                "observation.state": {"dtype": "float32", "shape": [4], "names": ["a", "b", "c", "d"]},
                "action": {"dtype": "float32", "shape": [4], "names": None},
                "observation.images.top": {"dtype": "video", "shape": [*IMAGE_HW, 3],
                                           "names": ["height", "width", "channels"]},
                "timestamp": {"dtype": "float32", "shape": [1], "names": None},
                "frame_index": {"dtype": "int64", "shape": [1], "names": None},
                "episode_index": {"dtype": "int64", "shape": [1], "names": None},
                "index": {"dtype": "int64", "shape": [1], "names": None},
                "task_index": {"dtype": "int64", "shape": [1], "names": None}}}
    if version == "v2.1":
        info["features"]["observation.images.wrist"] = {"dtype": "image", "shape": [3, 10, 14],
                                                        "names": ["channels", "height", "width"]}
    return info


def _lerobot_rows(rng: np.random.Generator, episode: int, n: int, fps: float, start: int) -> dict:
    return {"observation.state": rng.normal(size=(n, 4)).astype(np.float32),
            "action": rng.normal(size=(n, 4)).astype(np.float32),
            "timestamp": (np.arange(n) / fps).astype(np.float32),
            "frame_index": np.arange(n), "episode_index": np.full(n, episode),
            "index": start + np.arange(n), "task_index": np.zeros(n, np.int64)}


def _table(rows: dict) -> pa.Table:
    cols = {}
    for key, arr in rows.items():
        if arr.ndim == 4:  # images as LeRobot stores them: {"bytes": PNG, "path": None}
            pngs = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in arr]
            cols[key] = pa.array([{"bytes": png, "path": None} for png in pngs])
        elif arr.ndim == 2:
            cols[key] = pa.array(list(arr), type=pa.list_(pa.float32()))
        else:
            cols[key] = pa.array(arr)
    return pa.table(cols)


def make_lerobot_v21(root: Path, lengths: tuple[int, ...] = (6, 4), fps: float = 10.0,
                     seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_lerobot_info("v2.1", fps, len(lengths))))
    lines, episodes, start = [], [], 0
    for k, n in enumerate(lengths):
        rows = _lerobot_rows(rng, k, n, fps, start)
        rows["observation.images.wrist"] = rng.integers(0, 256, (n, 10, 14, 3), dtype=np.uint8)
        path = root / "data" / "chunk-000" / f"episode_{k:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_table(rows), path)
        write_video(root / "videos" / "chunk-000" / "observation.images.top" / f"episode_{k:06d}.mp4",
                    grey_frames(n), fps)
        lines.append(json.dumps({"episode_index": k, "tasks": ["push"], "length": n}))
        episodes.append(rows)
        start += n
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    return episodes


def make_lerobot_v30(root: Path, lengths: tuple[int, ...] = (5, 3, 6), fps: float = 10.0,
                     seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Episodes 0-1 share data file 0 and video file 0; episode 2 is in file 1 of each."""
    rng = np.random.default_rng(seed)
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_lerobot_info("v3.0", fps, len(lengths))))
    files = [[0, 1], [2]]
    episodes, meta_rows, start = [], [], 0
    for file_index, members in enumerate(files):
        tables, videos, t_file = [], [], 0.0
        file_frames = grey_frames(sum(lengths[m] for m in members))
        for k in members:
            n = lengths[k]
            rows = _lerobot_rows(rng, k, n, fps, start)
            episodes.append(rows)
            tables.append(_table(rows))
            # Grey levels continue across episodes in one file: each frame still names its source.
            first = int(round(t_file * fps))
            videos.append(file_frames[first:first + n])
            meta_rows.append({"episode_index": k, "length": n,
                              "data/chunk_index": 0, "data/file_index": file_index,
                              "dataset_from_index": start, "dataset_to_index": start + n,
                              "videos/observation.images.top/chunk_index": 0,
                              "videos/observation.images.top/file_index": file_index,
                              "videos/observation.images.top/from_timestamp": t_file,
                              "videos/observation.images.top/to_timestamp": t_file + n / fps})
            t_file += n / fps
            start += n
        path = root / "data" / "chunk-000" / f"file-{file_index:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(tables), path)
        # AV1, like the videos LeRobot v3 writes.
        write_video(root / "videos" / "observation.images.top" / "chunk-000" / f"file-{file_index:03d}.mp4",
                    np.concatenate(videos), fps, codec="libsvtav1")
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(meta_rows), path)
    return episodes
