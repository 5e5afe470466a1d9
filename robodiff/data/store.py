"""The Zarr episode store, in the layout of the reference Diffusion Policy code.

    <store>.zarr/.zattrs          {"robodiff": {"version": 1, "fps", "task", "robot", "features"}}
    <store>.zarr/data/<key>       every episode concatenated on axis 0
    <store>.zarr/meta/episode_ends  int64 cumulative end of each committed episode

An episode is committed by appending its data first and `meta/episode_ends` last, so a writer
killed at any point leaves every earlier episode intact and at most an uncommitted tail that
readers ignore and `repair()` truncates.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

from robodiff.errors import StoreError
from robodiff.features import Feature, Features, features_from_dict, features_to_dict, infer_feature

FORMAT_VERSION = 1
LOWDIM_CHUNK_BYTES = 2 * 1024 * 1024


def default_compressor() -> numcodecs.abc.Codec:
    # Lossless: demonstrations are the product; zstd via blosc is fast to decode in workers.
    return numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)


def chunk_shape(feature: Feature) -> tuple[int, ...]:
    """Images: one frame per chunk. Everything else: about 2 MB of rows per chunk."""
    if feature.kind == "image":
        return (1, *feature.shape)
    row_bytes = max(1, int(np.prod(feature.shape, dtype=np.int64)) * np.dtype(feature.dtype).itemsize)
    return (max(1, LOWDIM_CHUNK_BYTES // row_bytes), *feature.shape)


def is_zip(path: Path) -> bool:
    return path.suffix == ".zip" and path.is_file()


class EpisodeStore:
    """Create with `EpisodeStore.create`, open with `EpisodeStore.open`."""

    def __init__(self, root: zarr.Group, path: Path, writable: bool, zip_store: Any = None):
        self.root = root
        self.path = path
        self.writable = writable
        self._zip_store = zip_store
        meta = dict(root.attrs.get("robodiff", {}))
        self.fps: float | None = meta.get("fps")
        self.task: str | None = meta.get("task")
        self.robot: str | None = meta.get("robot")
        data = self._data_group()
        if "features" in meta:
            self.features: Features = features_from_dict(meta["features"])
        else:
            self.features = {k: infer_feature(k, data[k]) for k in sorted(data.array_keys())}
        self._ends_cache: np.ndarray | None = None

    # ---------------------------------------------------------------- creation and opening
    @classmethod
    def create(cls, path: str | os.PathLike, features: Features, fps: float | None = None,
               task: str | None = None, robot: str | None = None, overwrite: bool = False,
               extra_attrs: Mapping[str, Any] | None = None) -> "EpisodeStore":
        path = Path(path)
        if path.exists() and not overwrite:
            raise StoreError(f"{path}: already exists (pass overwrite to replace it)")
        if path.exists():
            shutil.rmtree(path)
        root = zarr.open_group(str(path), mode="w", zarr_format=2)
        data = root.create_group("data")
        meta = root.create_group("meta")
        for key, feat in features.items():
            data.create_array(key, shape=(0, *feat.shape), chunks=chunk_shape(feat), dtype=feat.dtype,
                              compressors=default_compressor(), fill_value=0)
        meta.create_array("episode_ends", shape=(0,), chunks=(4096,), dtype="int64",
                          compressors=None, fill_value=0)
        attrs = {"version": FORMAT_VERSION, "fps": fps, "task": task, "robot": robot,
                 "features": features_to_dict(features)}
        if extra_attrs:
            attrs.update(extra_attrs)
        root.attrs["robodiff"] = attrs
        return cls(root, path, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "EpisodeStore":
        """Open a directory store (Zarr format 2 or 3) or a `.zarr.zip` (read-only)."""
        path = Path(path)
        if not path.exists():
            raise StoreError(f"{path}: no such episode store")
        zip_store = None
        try:
            if is_zip(path):
                if mode != "r":
                    raise StoreError(f"{path}: zip stores are read-only")
                if not zipfile.is_zipfile(path):
                    raise StoreError(f"{path}: not a zip file")
                zip_store = zarr.storage.ZipStore(str(path), mode="r")
                root = zarr.open_group(zip_store, mode="r")
            else:
                root = zarr.open_group(str(path), mode="r" if mode == "r" else "r+")
        except StoreError:
            raise
        except Exception as exc:  # zarr raises several types for "not a group"
            raise StoreError(f"{path}: not a Zarr episode store ({type(exc).__name__}: {exc})") from None
        if "data" not in root or "meta" not in root or "episode_ends" not in root["meta"]:
            raise StoreError(f"{path}: not an episode store (needs data/ and meta/episode_ends)")
        return cls(root, path, writable=(mode != "r"), zip_store=zip_store)

    def close(self) -> None:
        if self._zip_store is not None:
            self._zip_store.close()
            self._zip_store = None

    def __enter__(self) -> "EpisodeStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- structure
    def _data_group(self) -> zarr.Group:
        return self.root["data"]

    def array(self, key: str) -> zarr.Array:
        try:
            return self._data_group()[key]
        except KeyError:
            raise StoreError(f"{self.path}: no array data/{key}") from None

    @property
    def keys(self) -> list[str]:
        return list(self.features)

    @property
    def episode_ends(self) -> np.ndarray:
        if self._ends_cache is None:
            self._ends_cache = np.asarray(self.root["meta"]["episode_ends"][:], dtype=np.int64)
        return self._ends_cache

    @property
    def n_episodes(self) -> int:
        return int(len(self.episode_ends))

    @property
    def n_frames(self) -> int:
        ends = self.episode_ends
        return int(ends[-1]) if len(ends) else 0

    def episode_bounds(self, k: int) -> tuple[int, int]:
        n = self.n_episodes
        if not -n <= k < n:
            raise StoreError(f"{self.path}: episode {k} out of range (store has {n})")
        k %= n
        ends = self.episode_ends
        return (int(ends[k - 1]) if k > 0 else 0), int(ends[k])

    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self.episode_ends]))

    # ---------------------------------------------------------------- reading
    def read_slice(self, key: str, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.array(key)[start:stop])

    def read_episode(self, k: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        start, stop = self.episode_bounds(k)
        return {key: self.read_slice(key, start, stop) for key in (keys or self.keys)}

    def iter_episodes(self, keys: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        for k in range(self.n_episodes):
            yield self.read_episode(k, keys)

    def uncommitted_tail(self) -> dict[str, int]:
        """Frames beyond the last committed end, per key (only keys that have any)."""
        n = self.n_frames
        return {k: int(self.array(k).shape[0]) - n for k in self.keys if self.array(k).shape[0] > n}

    # ---------------------------------------------------------------- writing
    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.path}: opened read-only")

    def append_episode(self, episode: Mapping[str, np.ndarray]) -> int:
        """Append one episode (all keys, equal lengths) and commit it. Returns its index."""
        self._require_writable()
        missing = set(self.keys) - set(episode)
        extra = set(episode) - set(self.keys)
        if missing or extra:
            raise StoreError(f"{self.path}: episode keys differ from the store's "
                             f"(missing {sorted(missing)}, unexpected {sorted(extra)})")
        lengths = {k: len(v) for k, v in episode.items()}
        if len(set(lengths.values())) != 1:
            raise StoreError(f"{self.path}: episode arrays have unequal lengths {lengths}")
        length = next(iter(lengths.values()))
        if length == 0:
            raise StoreError(f"{self.path}: empty episode")
        if self.uncommitted_tail():
            self.repair()
        start = self.n_frames
        for key, feat in self.features.items():
            arr = np.asarray(episode[key])
            if tuple(arr.shape[1:]) != feat.shape:
                raise StoreError(f"{self.path}: '{key}' has shape {list(arr.shape[1:])} per step, "
                                 f"the store expects {list(feat.shape)}")
            self.array(key).append(arr.astype(feat.dtype, copy=False), axis=0)
        ends = self.root["meta"]["episode_ends"]
        ends.append(np.array([start + length], dtype=np.int64))
        self._ends_cache = None
        return self.n_episodes - 1

    def repair(self) -> dict[str, int]:
        """Truncate the uncommitted tail. Returns the frames dropped per key."""
        self._require_writable()
        tail = self.uncommitted_tail()
        n = self.n_frames
        for key in tail:
            arr = self.array(key)
            arr.resize((n, *arr.shape[1:]))
        return tail

    def set_attrs(self, **attrs: Any) -> None:
        self._require_writable()
        meta = dict(self.root.attrs.get("robodiff", {}))
        meta.update(attrs)
        self.root.attrs["robodiff"] = meta
        self.fps = meta.get("fps")
        self.task = meta.get("task")
        self.robot = meta.get("robot")

    def info(self) -> dict[str, Any]:
        lengths = self.episode_lengths()
        return {
            "path": str(self.path),
            "episodes": self.n_episodes,
            "frames": self.n_frames,
            "fps": self.fps,
            "task": self.task,
            "robot": self.robot,
            "features": features_to_dict(self.features),
            "episode_length_min": int(lengths.min()) if len(lengths) else 0,
            "episode_length_max": int(lengths.max()) if len(lengths) else 0,
            "uncommitted_tail": self.uncommitted_tail(),
            "zarr_format": int(self.root.metadata.zarr_format),
        }


class EpisodeRecorder:
    """Buffers one episode's steps and commits them with `EpisodeStore.append_episode`."""

    def __init__(self, store: EpisodeStore):
        self.store = store
        self._steps: dict[str, list[np.ndarray]] = {k: [] for k in store.keys}

    def add(self, step: Mapping[str, Any]) -> None:
        for key in self.store.keys:
            if key not in step:
                raise StoreError(f"{self.store.path}: step is missing '{key}'")
            self._steps[key].append(np.asarray(step[key]))

    def __len__(self) -> int:
        return len(self._steps[self.store.keys[0]]) if self.store.keys else 0

    def commit(self) -> int:
        episode = {k: np.stack(v) for k, v in self._steps.items()}
        index = self.store.append_episode(episode)
        self.discard()
        return index

    def discard(self) -> None:
        self._steps = {k: [] for k in self.store.keys}
