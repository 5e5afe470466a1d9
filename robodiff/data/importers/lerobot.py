"""LeRobot datasets, v2.1 (one parquet and one mp4 per episode) and v3.0 (many episodes per file).

Names: `observation.state` -> `state`, `observation.images.<cam>` -> `<cam>`, other
`observation.<x>` -> `<x>`, `action` and `timestamp` unchanged; bookkeeping columns (indices,
`next.*`, tasks) are not imported. Video frames are matched to rows by timestamp: the last frame
at or before `timestamp` (v2.1: the episode's own video, starting at its first timestamp; v3.0: the
shared file, offset by the episode's `videos/<key>/from_timestamp`).
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robodiff.data.importers.source import Episode, Source, lowdim, require_action
from robodiff.data.video import FrameSampler, first_frame
from robodiff.errors import UserError
from robodiff.features import Feature, Features

V21_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V30_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
NUMERIC = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")


def feature_name(lerobot_key: str) -> str | None:
    """Our name for a LeRobot feature, or None when it is bookkeeping we do not import."""
    if lerobot_key in ("action", "timestamp"):
        return lerobot_key
    if lerobot_key == "observation.state":
        return "state"
    if lerobot_key.startswith("observation.images."):
        return lerobot_key[len("observation.images."):]
    if lerobot_key.startswith("observation."):
        return lerobot_key[len("observation."):]
    return None


class Layout:
    """info.json, parsed: which columns become which features, and where the files are."""

    def __init__(self, src: Path):
        self.src = src
        self.info_path = src / "meta" / "info.json"
        try:
            self.info: dict[str, Any] = json.loads(self.info_path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.info_path}: unreadable ({exc})") from None
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in ("v2.1", "v3.0"):
            raise UserError(f"{self.info_path}: codebase_version '{self.version}' is not supported "
                            f"(v2.1 or v3.0)")
        self.fps = float(self.required("fps"))
        spec = self.required("features")
        require_action(spec, str(self.info_path))
        self.columns: dict[str, str] = {}  # LeRobot key -> our name
        self.kinds: dict[str, str] = {}  # LeRobot key -> video | image | numeric
        for key, feat in spec.items():
            name = feature_name(key)
            dtype = feat.get("dtype")
            if name is None or (dtype not in ("video", "image") and dtype not in NUMERIC):
                continue
            if name in self.columns.values():
                raise UserError(f"{self.info_path}: two features map to the name '{name}'")
            self.columns[key] = name
            self.kinds[key] = dtype if dtype in ("video", "image") else "numeric"
        self.spec = spec
        v21 = self.version == "v2.1"
        self.data_path = str(self.info.get("data_path", V21_DATA if v21 else V30_DATA))
        self.video_path = str(self.info.get("video_path") or (V21_VIDEO if v21 else V30_VIDEO))

    def required(self, key: str) -> Any:
        if key not in self.info:
            raise UserError(f"{self.info_path}: no '{key}'")
        return self.info[key]

    def numeric_shape(self, key: str) -> tuple[int, ...]:
        # LeRobot declares scalars as shape [1]; our timestamps are one float64 per step.
        return () if key == "timestamp" else tuple(int(s) for s in self.spec[key].get("shape", [1]))

    def names(self, key: str) -> tuple[str, ...] | None:
        names = self.spec[key].get("names")
        if isinstance(names, dict) and len(names) == 1:
            names = next(iter(names.values()))
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return tuple(names) if (len(names),) == self.numeric_shape(key) else None
        return None


def read(src: Path) -> Source:
    layout = Layout(src)
    episodes = _v21_episodes(layout) if layout.version == "v2.1" else _v30_episodes(layout)
    if not episodes:
        raise UserError(f"{layout.info_path}: the dataset lists no episodes")
    features: Features = {}
    for key, name in layout.columns.items():
        kind = layout.kinds[key]
        if kind == "video":
            video = _video_file(layout, key, episodes[0])
            features[name] = Feature("image", first_frame(video).shape, "uint8")
        elif kind == "image":
            shape = tuple(int(s) for s in layout.spec[key]["shape"])
            hwc = shape if shape[-1] in (1, 3, 4) else (shape[1], shape[2], shape[0])
            features[name] = Feature("image", hwc, "uint8")
        else:
            feat_kind = {"action": "action", "timestamp": "timestamp"}.get(name, "lowdim")
            features[name] = lowdim(layout.numeric_shape(key), feat_kind, layout.names(key))
    features.setdefault("timestamp", lowdim((), "timestamp"))
    robot = layout.info.get("robot_type")
    # LeRobot records an SO-101 (`so101`, `so101_follower`, ...) in degrees or in range100 and
    # does not say which; our name for the arm is `so101`.
    so101 = str(robot).startswith("so101")
    return Source(origin=str(src), features=features, episodes=_stream(layout, episodes),
                  total=len(episodes), fps=layout.fps, robot="so101" if so101 else robot,
                  units_unstated=so101)


def _v21_episodes(layout: Layout) -> list[dict[str, Any]]:
    path = layout.src / "meta" / "episodes.jsonl"
    if path.is_file():
        try:
            indices = [int(json.loads(line)["episode_index"]) for line in path.read_text().splitlines()
                       if line.strip()]
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: malformed line ({exc})") from None
    else:
        indices = list(range(int(layout.required("total_episodes"))))
    _require_unique(indices, path)
    chunk = int(layout.info.get("chunks_size", 1000))
    if chunk < 1:
        raise UserError(f"{layout.src / 'meta' / 'info.json'}: chunks_size is {chunk}, expected >= 1")
    return [{"episode_index": i, "episode_chunk": i // chunk} for i in sorted(indices)]


def _require_unique(indices: list[int], where: Path) -> None:
    seen: set[int] = set()
    for i in indices:
        if i in seen:
            raise UserError(f"{where}: episode_index {i} is listed twice")
        seen.add(i)


def _v30_episodes(layout: Layout) -> list[dict[str, Any]]:
    files = sorted((layout.src / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise UserError(f"{layout.src / 'meta' / 'episodes'}: no chunk-*/file-*.parquet episode tables")
    rows: list[dict[str, Any]] = []
    for path in files:
        rows += _read_table(path).to_pylist()
    for row in rows:
        for column in ("episode_index", "data/chunk_index", "data/file_index"):
            if column not in row:
                raise UserError(f"{files[0].parent.parent}: episode tables lack the column '{column}'")
    _require_unique([int(r["episode_index"]) for r in rows], files[0].parent.parent)
    return sorted(rows, key=lambda r: int(r["episode_index"]))


def _read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise UserError(f"{path}: missing")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: unreadable parquet ({exc})") from None


def _data_file(layout: Layout, episode: dict[str, Any]) -> Path:
    if layout.version == "v2.1":
        return layout.src / layout.data_path.format(**episode)
    return layout.src / layout.data_path.format(chunk_index=int(episode["data/chunk_index"]),
                                                file_index=int(episode["data/file_index"]))


def _video_file(layout: Layout, key: str, episode: dict[str, Any]) -> Path:
    if layout.version == "v2.1":
        return layout.src / layout.video_path.format(video_key=key, **episode)
    try:
        chunk, file = int(episode[f"videos/{key}/chunk_index"]), int(episode[f"videos/{key}/file_index"])
    except KeyError:
        raise UserError(f"{layout.src / 'meta' / 'episodes'}: no videos/{key}/chunk_index or "
                        f"file_index for episode {episode['episode_index']}") from None
    return layout.src / layout.video_path.format(video_key=key, chunk_index=chunk, file_index=file)


def _column(table: pa.Table, key: str, n: int, shape: tuple[int, ...], path: Path) -> np.ndarray:
    column = table.column(key).combine_chunks()
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) \
            or pa.types.is_large_list(column.type):
        values = column.flatten().to_numpy(zero_copy_only=False)
        if values.size != n * int(np.prod(shape, dtype=np.int64)):
            raise UserError(f"{path}: column '{key}' does not hold {list(shape)} values per row")
        return values.reshape(n, *shape)
    return column.to_numpy(zero_copy_only=False).reshape(n, *shape)


def _decode_images(table: pa.Table, key: str, path: Path) -> np.ndarray:
    # OpenCV is imported where it is used: importing it starts its thread pool, which slows torch
    # on the same cores (1.2-1.4x on linear layers, measured 2026-12-07), and training imports this.
    import cv2

    images = []
    for cell in table.column(key).to_pylist():
        raw = cell.get("bytes") if isinstance(cell, dict) else None
        image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) if raw else None
        if image is None:
            raise UserError(f"{path}: column '{key}' holds an undecodable image")
        images.append(image[..., None] if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return np.stack(images)


class EpisodeRows:
    """Row numbers of each episode in a data file that holds several (grouped once per file:
    filtering the whole table per episode costs files x episodes)."""

    def __init__(self, table: pa.Table, path: Path):
        if "episode_index" not in table.column_names:
            raise UserError(f"{path}: no column 'episode_index'")
        column = table.column("episode_index").to_numpy()
        self.order = np.argsort(column, kind="stable")
        self.sorted = column[self.order]

    def __getitem__(self, index: int) -> np.ndarray:
        lo, hi = np.searchsorted(self.sorted, [index, index + 1])
        return self.order[lo:hi]


def _stream(layout: Layout, episodes: list[dict[str, Any]]) -> Generator[Episode, None, None]:
    samplers: dict[str, FrameSampler] = {}
    cached: tuple[Path, pa.Table, EpisodeRows | None] | None = None
    try:
        for episode in episodes:
            path = _data_file(layout, episode)
            if cached is None or cached[0] != path:
                table = _read_table(path)
                shared = layout.version == "v3.0" or "episode_index" in table.column_names
                cached = (path, table, EpisodeRows(table, path) if shared else None)
            _, table, rows = cached
            index = int(episode["episode_index"])
            if rows is not None:
                table = table.take(rows[index])
            n = table.num_rows
            if n == 0:
                raise UserError(f"{path}: no rows for episode {index}")
            missing = [k for k, kind in layout.kinds.items()
                       if kind != "video" and k not in table.column_names]
            if missing:
                raise UserError(f"{path}: no column {missing[0]!r} (listed in meta/info.json)")
            data: dict[str, np.ndarray] = {}
            for key, name in layout.columns.items():
                if layout.kinds[key] == "numeric":
                    data[name] = _column(table, key, n, layout.numeric_shape(key), path)
                elif layout.kinds[key] == "image":
                    data[name] = _decode_images(table, key, path)
            if "timestamp" not in data:
                data["timestamp"] = np.arange(n) / layout.fps
            times = data["timestamp"].astype(np.float64)
            for key, name in layout.columns.items():
                if layout.kinds[key] != "video":
                    continue
                video = _video_file(layout, key, episode)
                if key not in samplers or samplers[key].path != video:
                    if key in samplers:
                        samplers[key].close()
                    samplers[key] = FrameSampler(video)
                if layout.version == "v2.1":
                    query = times - times[0]
                else:
                    query = float(episode.get(f"videos/{key}/from_timestamp", 0.0)) + times
                data[name] = samplers[key].frames_at(query, f"episode {index} of {path}")
            yield Episode(data, f"{path} episode {index}")
    finally:
        for sampler in samplers.values():
            sampler.close()
