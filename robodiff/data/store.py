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
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from numcodecs.compat import ensure_contiguous_ndarray
from zarr.core.array import AsyncArray

from robodiff.errors import StoreError
from robodiff.features import Feature, Features, features_from_dict, features_to_dict, infer_feature

FORMAT_VERSION = 1
LOWDIM_CHUNK_BYTES = 2 * 1024 * 1024


class CheckedBlosc(numcodecs.Blosc):
    """Blosc that rejects a chunk shorter than its own header says.

    c-blosc stores incompressible data (e.g. noisy images) verbatim and then decodes a truncated
    chunk without complaint, returning whatever memory follows. Registered under the standard id
    "blosc", so stores stay plain Zarr for every other reader.
    """

    def decode(self, buf: Any, out: Any = None) -> Any:
        view = memoryview(ensure_contiguous_ndarray(buf)).cast("B")
        if len(view) < 16:
            raise ValueError(f"truncated blosc chunk ({len(view)} bytes, shorter than its header)")
        _, cbytes, _ = numcodecs.blosc._cbuffer_sizes(view)
        if len(view) < cbytes:
            raise ValueError(f"truncated blosc chunk ({len(view)} of {cbytes} bytes)")
        return super().decode(buf, out)


numcodecs.register_codec(CheckedBlosc)


def default_compressor() -> numcodecs.abc.Codec:
    # Lossless: demonstrations are the product; zstd via blosc is fast to decode in workers.
    return CheckedBlosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)


def chunk_shape(feature: Feature) -> tuple[int, ...]:
    """Images: one frame per chunk. Everything else: about 2 MB of rows per chunk."""
    if feature.kind == "image":
        return (1, *feature.shape)
    row_bytes = max(1, int(np.prod(feature.shape, dtype=np.int64)) * np.dtype(feature.dtype).itemsize)
    return (max(1, LOWDIM_CHUNK_BYTES // row_bytes), *feature.shape)


def is_zip(path: Path) -> bool:
    return path.suffix == ".zip" and path.is_file()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def append_data_first(arr: zarr.Array, values: np.ndarray) -> None:
    """Append along axis 0 writing the chunks before the new shape.

    `zarr.Array.append` writes the grown shape first; a writer killed before the chunk lands would
    leave a visible fill value. For `meta/episode_ends` that would be a torn commit, so the chunk
    is written through a view with the grown shape and the metadata is saved last.
    """
    n = arr.shape[0]
    new_shape = (n + len(values), *arr.shape[1:])
    grown = AsyncArray(metadata=arr.metadata.update_shape(new_shape), store_path=arr.store_path,
                       config=arr.config)
    zarr.Array(grown)[n:] = values
    arr.resize(new_shape)


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
        self.id: str | None = meta.get("id")
        data = self._data_group()
        self._arrays: dict[str, zarr.Array] = {}
        self._direct: dict[str, bool] = {}
        # Foreign stores (reference layout, no robodiff attrs) get features inferred from the
        # arrays; their dtypes are then not a contract that `validate` can check.
        self.declared_features = "features" in meta
        if self.declared_features:
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
        # `id` tells caches next to the store (normalizer stats) that it was recreated.
        attrs = {"version": FORMAT_VERSION, "id": uuid.uuid4().hex, "fps": fps, "task": task, "robot": robot,
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
        # Cached: opening an array re-reads its metadata, which would dominate per-window reads.
        if key not in self._arrays:
            try:
                self._arrays[key] = self._data_group()[key]
            except KeyError:
                raise StoreError(f"{self.path}: no array data/{key}") from None
        return self._arrays[key]

    def chunk_file(self, key: str, row: int) -> str:
        """The file (or zip member) holding `row` of `data/<key>`, for error messages."""
        arr = self.array(key)
        coords = (row // arr.chunks[0],) + (0,) * (len(arr.shape) - 1)
        member = f"data/{key}/{arr.metadata.encode_chunk_key(coords)}"
        return f"{self.path}::{member}" if self._zip_store is not None else str(self.path / member)

    @property
    def keys(self) -> list[str]:
        return list(self.features)

    @property
    def episode_ends(self) -> np.ndarray:
        if self._ends_cache is None:
            try:
                self._ends_cache = np.asarray(self.root["meta"]["episode_ends"][:], dtype=np.int64)
            except Exception as exc:  # a truncated chunk or unreadable metadata
                raise StoreError(f"{self.path}: cannot read meta/episode_ends "
                                 f"({type(exc).__name__}: {_first_line(exc)})") from None
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
        arr = self.array(key)
        if self._frame_chunks(key):
            return self._read_frames(key, start, stop)
        try:
            return np.asarray(arr[start:stop])
        except Exception:  # codecs raise assorted types on a truncated or corrupt chunk
            raise StoreError(self._decode_error(key, start, stop)) from None

    def _frame_chunks(self, key: str) -> bool:
        """Whether `data/<key>` is a directory-stored Zarr v2 array with one frame per chunk.

        Those (our images) are read by decoding the chunk files directly: zarr's general path
        costs about half a millisecond per call, more than decoding a 96x96 frame.
        """
        if key not in self._direct:
            arr = self.array(key)
            meta = arr.metadata
            store = arr.store_path.store
            self._direct[key] = (
                self._zip_store is None and isinstance(store, zarr.storage.LocalStore)
                and meta.zarr_format == 2 and not meta.filters and meta.order == "C"
                and arr.chunks == (1, *arr.shape[1:]))
        return self._direct[key]

    def _read_frames(self, key: str, start: int, stop: int) -> np.ndarray:
        arr = self.array(key)
        meta = arr.metadata
        start, stop, _ = slice(start, stop).indices(arr.shape[0])
        out = np.empty((max(0, stop - start), *arr.shape[1:]), dtype=arr.dtype)
        folder = Path(arr.store_path.store.root) / arr.store_path.path
        tail = (0,) * (len(arr.shape) - 1)
        for i, row in enumerate(range(start, stop)):
            file = folder / meta.encode_chunk_key((row, *tail))
            try:
                raw = file.read_bytes()
            except FileNotFoundError:  # never written: zarr reads the fill value
                out[i] = meta.fill_value or 0
                continue
            try:
                if meta.compressor is None:
                    out[i] = np.frombuffer(raw, dtype=arr.dtype).reshape(arr.shape[1:])
                else:
                    meta.compressor.decode(raw, out=out[i])
            except Exception as exc:
                raise StoreError(f"{file}: corrupt chunk ({type(exc).__name__}: {_first_line(exc)})") from None
        return out

    def _decode_error(self, key: str, start: int, stop: int) -> str:
        arr = self.array(key)
        step = arr.chunks[0]
        first = start - start % step
        for row in range(first, min(stop, arr.shape[0]), step):
            try:
                arr[row:min(row + step, arr.shape[0])]
            except Exception as exc:
                return f"{self.chunk_file(key, row)}: corrupt chunk ({type(exc).__name__}: {_first_line(exc)})"
        return f"{self.path}: cannot read data/{key}[{start}:{stop}]"

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
        arrays = {key: np.asarray(episode[key]) for key in self.features}
        for key, feat in self.features.items():  # all checked before anything is written
            if tuple(arrays[key].shape[1:]) != feat.shape:
                raise StoreError(f"{self.path}: '{key}' has shape {list(arrays[key].shape[1:])} per step, "
                                 f"the store expects {list(feat.shape)}")
        start = self.n_frames
        for key, arr in arrays.items():
            # The array's own dtype: a foreign store's inferred features may be narrower than it.
            self.array(key).append(arr.astype(self.array(key).dtype, copy=False), axis=0)
        append_data_first(self.root["meta"]["episode_ends"], np.array([start + length], dtype=np.int64))
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
