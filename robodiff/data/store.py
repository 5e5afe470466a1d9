"""The Zarr episode store, in the layout of the reference Diffusion Policy code.

    <store>.zarr/.zattrs          {"robodiff": {"version": 1, "fps", "task", "robot", "features"}}
    <store>.zarr/data/<key>       every episode concatenated on axis 0
    <store>.zarr/meta/episode_ends  int64 cumulative end of each committed episode

An episode is committed by appending its data first and `meta/episode_ends` last, so a writer
killed at any point leaves every earlier episode intact and at most an uncommitted tail that
readers ignore and `repair()` truncates. After `meta/episode_ends`, the number of committed
episodes is also written to the attributes: `repair()` compares the two and refuses to truncate
when the commit record itself was damaged (an emptied `episode_ends` would otherwise turn every
frame into a "tail").

Our stores write every chunk, even one that is all fill value (zarr skips those by default, so a
black frame or a zero action would be indistinguishable from a deleted chunk file), and say so
with `complete_chunks: true` in their attributes; a missing chunk in such a store is an error.
One writer at a time: a writable store holds an exclusive lock on `<store>/.robodiff.lock`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import sys
import threading
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from numcodecs.compat import ensure_contiguous_ndarray
from zarr.core.array import AsyncArray
from zarr.core.sync import sync

from robodiff.errors import NotAStoreError, StoreError, UserError
from robodiff.features import Feature, Features, features_from_dict, features_to_dict, infer_feature

FORMAT_VERSION = 1
LOWDIM_CHUNK_BYTES = 2 * 1024 * 1024
LOCK_FILE = ".robodiff.lock"
# Written to every array we open for writing: a chunk of fill values is still a chunk file.
WRITE_ALL_CHUNKS = {"write_empty_chunks": True}


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
    # Level 1: within 3 % of level 3's size on camera frames and simulated images, but several
    # times faster to encode and faster to decode, which lets a recording of two 640x480 cameras
    # at 30 Hz be compressed as it runs (docs/benchmarks.md, "Recording on hardware").
    return CheckedBlosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE)


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


def ends_problems(ends: np.ndarray) -> list[str]:
    """What is wrong with a commit record: episodes must have frames and ends must increase."""
    if len(ends) and ends[0] <= 0:
        return [f"meta/episode_ends[0] is {int(ends[0])}: the first episode is empty"]
    bad = np.nonzero(np.diff(ends) <= 0)[0]
    if len(bad):
        i = int(bad[0])
        return [f"meta/episode_ends is not increasing at index {i + 1} "
                f"({int(ends[i])} -> {int(ends[i + 1])}; {len(bad)} such places)"]
    return []


def _member_names(group: zarr.Group) -> list[str]:
    """Names of a group's children, listed from the store itself: zarr's `array_keys()` parses
    every member's metadata and fails as a whole when one array's metadata is garbage."""
    store, prefix = group.store_path.store, group.store_path.path

    async def names() -> list[str]:
        return [name async for name in store.list_dir(prefix)]

    return sorted(n for n in sync(names()) if not n.startswith(".") and n != "zarr.json")


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while a commit is written; delivered right after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is not None:  # None: installed outside Python, cannot be restored
            previous[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


def writer_pid(path: Path) -> int | None:
    """The pid of the process writing to the store now (holding its lock), or None."""
    lock = Path(path) / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        return int(holder) if holder.isdigit() else -1
    finally:
        os.close(fd)


def _acquire_lock(path: Path) -> int:
    lock = path / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"{path}: cannot be written ({exc.strerror}); a read-only store can be "
                         f"read but not changed") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise StoreError(f"{path}: another process (pid {holder or '?'}) is writing to this store; "
                         f"one writer at a time") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _zip_root(path: Path) -> str:
    """Where the group sits in a `.zarr.zip`: at the top, or in the one folder a zip tool made."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n in (".zgroup", "zarr.json") for n in names):
        return ""
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    if len(tops) == 1:
        top = tops.pop()
        if f"{top}/.zgroup" in names or f"{top}/zarr.json" in names:
            return top
    return ""


def checked_fps(fps: Any, what: str) -> float | None:
    """`fps` as a float (None stays None); anything but a positive finite number is refused,
    `what` naming where it came from."""
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not np.isfinite(fps) or fps <= 0:
        raise StoreError(f"{what} is {fps!r}, expected a positive number of frames per second")
    return float(fps)


def store_around(path: Path) -> Path | None:
    """The episode store that `path` is inside of (or is), if any: nothing may be written there
    but the store's own arrays."""
    for candidate in (path, *path.parents):
        if (candidate / "meta" / "episode_ends").exists() and (candidate / "data").is_dir():
            return candidate
    return None


def _attrs_of(root: zarr.Group, path: Path) -> dict[str, Any]:
    try:
        meta = root.attrs.get("robodiff", {})
    except Exception as exc:  # garbage .zattrs / zarr.json attributes
        raise StoreError(f"{path}: unreadable attributes ({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{path}: attribute 'robodiff' is {type(meta).__name__}, expected a mapping")
    return dict(meta)


class EpisodeStore:
    """Create with `EpisodeStore.create`, open with `EpisodeStore.open`."""

    def __init__(self, root: zarr.Group, path: Path, writable: bool, zip_store: Any = None):
        self.root = root
        self.path = path
        self.writable = writable
        self._zip_store = zip_store
        self._lock_fd: int | None = _acquire_lock(path) if writable else None
        self._arrays: dict[str, zarr.Array] = {}
        self._direct: dict[str, bool] = {}
        self._ends_cache: np.ndarray | None = None
        # Arrays whose missing chunks were reported already (by the integrity check or a read).
        self.missing_reported: set[str] = set()
        try:
            meta = _attrs_of(root, path)
            self.attrs: dict[str, Any] = meta
            self.fps: float | None = checked_fps(meta.get("fps"), f"{path}: attribute 'fps'")
            self.task: str | None = meta.get("task")
            self.robot: str | None = meta.get("robot")
            self.id: str | None = meta.get("id")
            # Chunk files of every committed frame exist (our writer); else a missing one reads as
            # the fill value and can only be warned about.
            self.complete_chunks = meta.get("complete_chunks") is True
            committed = meta.get("episodes")
            self.recorded_episodes: int | None = committed if isinstance(committed, int) else None
            # Foreign stores (reference layout, no robodiff attrs) get features inferred from the
            # arrays; their dtypes are then not a contract that `validate` can check.
            self.declared_features = "features" in meta
            if self.declared_features:
                try:
                    self.features: Features = features_from_dict(meta["features"])
                except UserError as exc:
                    raise StoreError(f"{path}: malformed features block in its attributes ({exc})") from None
                except (AttributeError, KeyError, TypeError, ValueError) as exc:
                    raise StoreError(f"{path}: malformed features block in its attributes "
                                     f"({type(exc).__name__}: {_first_line(exc)})") from None
            else:
                self.features = {k: infer_feature(k, self.array(k)) for k in self.array_names()}
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- creation and opening
    @classmethod
    def create(cls, path: str | os.PathLike, features: Features, fps: float | None = None,
               task: str | None = None, robot: str | None = None, overwrite: bool = False,
               extra_attrs: Mapping[str, Any] | None = None) -> "EpisodeStore":
        path = Path(path)
        if path.suffix == ".zip":
            raise StoreError(f"{path}: stores are written as directories (a .zip is read-only); drop the .zip")
        outer = store_around(path.parent.resolve()) if path.parent.exists() else None
        if outer is not None:
            raise StoreError(f"{path}: inside the episode store {outer}; choose a path outside it")
        if path.exists() and not overwrite:
            raise StoreError(f"{path}: already exists")
        if path.exists():
            shutil.rmtree(path)
        root = zarr.open_group(str(path), mode="w", zarr_format=2)
        data = root.create_group("data")
        meta = root.create_group("meta")
        for key, feat in features.items():
            data.create_array(key, shape=(0, *feat.shape), chunks=chunk_shape(feat), dtype=feat.dtype,
                              compressors=default_compressor(), fill_value=0, config=WRITE_ALL_CHUNKS)
        meta.create_array("episode_ends", shape=(0,), chunks=(4096,), dtype="int64",
                          compressors=None, fill_value=0, config=WRITE_ALL_CHUNKS)
        # `id` tells caches next to the store (normalizer stats) that it was recreated.
        attrs = {"version": FORMAT_VERSION, "id": uuid.uuid4().hex, "fps": fps, "task": task, "robot": robot,
                 "features": features_to_dict(features), "complete_chunks": True, "episodes": 0}
        if extra_attrs:
            attrs.update(extra_attrs)
        root.attrs["robodiff"] = attrs
        return cls(root, path, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "EpisodeStore":
        """Open a directory store (Zarr format 2 or 3) or a `.zarr.zip` (read-only)."""
        path = Path(path)
        if not path.exists():
            raise NotAStoreError(f"{path}: no such episode store")
        zip_store = None
        try:
            if is_zip(path):
                if mode != "r":
                    raise StoreError(f"{path}: zip stores are read-only")
                if not zipfile.is_zipfile(path):
                    raise NotAStoreError(f"{path}: not a zip file")
                zip_store = zarr.storage.ZipStore(str(path), mode="r")
                root = zarr.open_group(zip_store, mode="r", path=_zip_root(path))
            else:
                with warnings.catch_warnings():  # zarr warns (two lines) about mixed-format metadata
                    warnings.simplefilter("ignore")
                    root = zarr.open_group(str(path), mode="r" if mode == "r" else "r+")
        except StoreError:
            raise
        except Exception as exc:  # zarr raises several types for "not a group"
            kind = StoreError if store_around(path) == path else NotAStoreError
            what = "damaged store metadata" if kind is StoreError else "not a Zarr episode store"
            raise kind(f"{path}: {what} ({type(exc).__name__}: {_first_line(exc)})") from None
        try:
            is_store = "data" in root and "meta" in root and "episode_ends" in root["meta"]
        except Exception as exc:  # a member's metadata is garbage: a damaged store, not a foreign one
            raise StoreError(f"{path}: unreadable metadata ({type(exc).__name__}: {_first_line(exc)})") from None
        if not is_store:
            raise NotAStoreError(f"{path}: not an episode store (needs data/ and meta/episode_ends)")
        return cls(root, path, writable=(mode != "r"), zip_store=zip_store)

    def close(self) -> None:
        if self._zip_store is not None:
            self._zip_store.close()
            self._zip_store = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __del__(self) -> None:
        if getattr(self, "_lock_fd", None) is not None:
            os.close(self._lock_fd)

    def __enter__(self) -> "EpisodeStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- structure
    def _data_group(self) -> zarr.Group:
        return self.root["data"]

    def array_names(self) -> list[str]:
        """Every array under data/, whether or not its metadata parses."""
        return _member_names(self._data_group())

    def array(self, key: str) -> zarr.Array:
        # Cached: opening an array re-reads its metadata, which would dominate per-window reads.
        if key not in self._arrays:
            try:
                arr = self._data_group()[key]
            except KeyError:
                raise StoreError(f"{self.path}: no array data/{key}") from None
            except Exception as exc:  # garbage .zarray / zarr.json
                raise StoreError(f"{self.path}: data/{key} has unreadable array metadata "
                                 f"({type(exc).__name__}: {_first_line(exc)})") from None
            if not isinstance(arr, zarr.Array):
                raise StoreError(f"{self.path}: data/{key} is a group, not an array")
            if arr.ndim == 0:
                raise StoreError(f"{self.path}: data/{key} is a scalar, not frames along axis 0")
            if any(int(c) < 1 for c in (getattr(arr, "shards", None) or arr.chunks)):
                raise StoreError(f"{self.path}: data/{key} has chunk shape {list(arr.chunks)} in its metadata")
            self._arrays[key] = arr.with_config(WRITE_ALL_CHUNKS) if self.writable else arr
        return self._arrays[key]

    def chunk_file(self, key: str, row: int) -> str:
        """The file (or zip member) holding `row` of `data/<key>`, for error messages."""
        arr = self.array(key)
        coords = (row // arr.chunks[0],) + (0,) * (len(arr.shape) - 1)
        member = f"data/{key}/{arr.metadata.encode_chunk_key(coords)}"
        return f"{self.path}::{member}" if self._zip_store is not None else str(self.path / member)

    def _ends_array(self) -> zarr.Array:
        return self.root["meta"]["episode_ends"].with_config(WRITE_ALL_CHUNKS)

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
            if self._ends_cache.ndim != 1:
                raise StoreError(f"{self.path}: meta/episode_ends has shape {list(self._ends_cache.shape)}, "
                                 f"expected one dimension")
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

    def episode_of(self, row: int) -> int:
        """The committed episode holding frame `row` (n_episodes for a frame past the last end)."""
        return int(np.searchsorted(self.episode_ends, row, side="right"))

    def episodes_text(self, lo: int, hi: int) -> str:
        """'episode K' or 'episodes K-L' for frames [lo, hi) ('uncommitted' past the last end)."""
        n = self.n_episodes
        first, last = self.episode_of(lo), self.episode_of(max(lo, hi - 1))
        if first >= n:
            return "uncommitted"
        last = min(last, n - 1)
        return f"episode {first}" if first == last else f"episodes {first}-{last}"

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
            except FileNotFoundError:
                out[i] = self._missing_chunk(key, row, str(file), meta.fill_value or 0)
                continue
            try:
                if meta.compressor is None:
                    out[i] = np.frombuffer(raw, dtype=arr.dtype).reshape(arr.shape[1:])
                else:
                    meta.compressor.decode(raw, out=out[i])
            except Exception as exc:
                raise StoreError(f"{file}: corrupt chunk ({type(exc).__name__}: {_first_line(exc)}; "
                                 f"data/{key} frame {row}, {self.episodes_text(row, row + 1)})") from None
        return out

    def _missing_chunk(self, key: str, row: int, file: str, fill: Any) -> Any:
        """A chunk file that is not there: an error where every chunk was written, else zarr's
        fill value with one warning per array."""
        if row >= self.n_frames:  # an uncommitted frame may never have been written
            return fill
        where = f"{file}: chunk file is missing (data/{key} frame {row}, episode {self.episode_of(row)})"
        if self.complete_chunks:
            raise StoreError(where)
        if key not in self.missing_reported:
            self.missing_reported.add(key)
            print(f"warning: {where}; this store does not say that it wrote every chunk, so the frame "
                  f"is read as the fill value {fill}", file=sys.stderr)
        return fill

    def _decode_error(self, key: str, start: int, stop: int) -> str:
        arr = self.array(key)
        step = arr.chunks[0]
        first = start - start % step
        for row in range(first, min(stop, arr.shape[0]), step):
            end = min(row + step, arr.shape[0])
            try:
                arr[row:end]
            except Exception as exc:
                return (f"{self.chunk_file(key, row)}: corrupt chunk ({type(exc).__name__}: {_first_line(exc)}; "
                        f"data/{key} frames {row}-{end - 1}, {self.episodes_text(row, end)})")
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
        """Append one episode (all keys, equal lengths) and commit it. Returns its index.

        Ctrl-C waits for the commit; a write that fails (full disk, vanished directory) takes the
        partial data back off and raises a StoreError, leaving the committed episodes as they were."""
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
        arrays = {key: np.asarray(episode[key]) for key in self.features}
        for key, feat in self.features.items():  # all checked before anything is written
            if tuple(arrays[key].shape[1:]) != feat.shape:
                raise StoreError(f"{self.path}: '{key}' has shape {list(arrays[key].shape[1:])} per step, "
                                 f"the store expects {list(feat.shape)}")
        start = self.begin_episode()
        with interrupts_deferred():
            with self._taken_back_on_failure(start):
                for key, arr in arrays.items():
                    # The array's own dtype: a foreign store's inferred features may be narrower.
                    self.array(key).append(arr.astype(self.array(key).dtype, copy=False), axis=0)
                append_data_first(self._ends_array(), np.array([start + length], dtype=np.int64))
            self._count_committed()
        return self.n_episodes - 1

    def begin_episode(self) -> int:
        """Where the next episode's frames go: the uncommitted tail is dropped first, and every
        array must end where the commit record does."""
        self._require_writable()
        if self.uncommitted_tail():
            self.repair()
        start = self.n_frames
        short = {k: int(self.array(k).shape[0]) for k in self.keys if self.array(k).shape[0] != start}
        if short:  # new frames would land at different indices in different arrays
            key = min(short)
            raise StoreError(f"{self.path}: refusing to append: data/{key} has {short[key]} frames, not the "
                             f"{start} that meta/episode_ends commits")
        return start

    def commit_tail(self, length: int) -> int:
        """Commit the `length` frames every array holds past the last committed end (streamed
        there by a recorder since `begin_episode`): `meta/episode_ends` last, then the count.
        Returns the episode's index."""
        self._require_writable()
        start = self.n_frames
        rows = {k: int(self.array(k).shape[0]) for k in self.keys}
        wrong = sorted(k for k, n in rows.items() if n != start + length)
        if length <= 0:
            raise StoreError(f"{self.path}: empty episode")
        if wrong:
            raise StoreError(f"{self.path}: cannot commit {length} frames past frame {start}: data/{wrong[0]} "
                             f"holds {rows[wrong[0]] - start}")
        with interrupts_deferred():
            with self._taken_back_on_failure(start):
                append_data_first(self._ends_array(), np.array([start + length], dtype=np.int64))
            self._count_committed()
        return self.n_episodes - 1

    @contextmanager
    def _taken_back_on_failure(self, start: int) -> Iterator[None]:
        """A write that fails takes the frames past `start` back off and says so in one line."""
        try:
            yield
        except OSError as exc:
            self._ends_cache = None
            self._take_back(start)
            reason = exc.strerror or _first_line(exc)
            if exc.errno == errno.ENOSPC:
                reason = "no space left on the device"
            raise StoreError(f"{self.path}: could not write episode {self.n_episodes} ({reason}); "
                             f"the {self.n_episodes} committed episodes are intact") from None

    def _count_committed(self) -> None:
        self._ends_cache = None
        self.set_attrs(episodes=self.n_episodes)

    def _take_back(self, n: int) -> None:
        """Best effort after a failed write: the partial data would otherwise wait for a repair."""
        for key in self.keys:
            try:
                arr = self.array(key)
                if arr.shape[0] > n:
                    arr.resize((n, *arr.shape[1:]))
            except Exception:  # noqa: BLE001 - the store is already failing; readers ignore a tail
                pass

    def repair_plan(self) -> dict[str, int]:
        """The frames `repair()` would drop per key; a StoreError when the commit record is not
        trustworthy (the truncation would then delete committed data)."""
        ends = self.episode_ends
        problems = ends_problems(ends)
        n = self.n_frames
        lengths = {k: int(self.array(k).shape[0]) for k in self.keys}
        short = sorted(k for k, v in lengths.items() if v < n)
        if short:
            problems.append(f"data/{short[0]} has {lengths[short[0]]} frames, fewer than the {n} that "
                            f"meta/episode_ends commits")
        if self.recorded_episodes is not None and self.recorded_episodes > len(ends):
            problems.append(f"meta/episode_ends holds {len(ends)} episodes but {self.recorded_episodes} "
                            f"were committed")
        elif self.recorded_episodes is None and not len(ends) and any(lengths.values()):
            problems.append("meta/episode_ends is empty but the arrays hold data")
        tail = {k: v - n for k, v in lengths.items() if v > n}
        if problems and tail:
            loss = ", ".join(f"{v} frames of data/{k}" for k, v in sorted(tail.items())) or "nothing"
            raise StoreError(f"{self.path}: refusing to repair: {problems[0]}; truncating to the commit "
                             f"record would delete {loss}")
        return tail

    def repair(self) -> dict[str, int]:
        """Truncate the uncommitted tail. Returns the frames dropped per key."""
        self._require_writable()
        tail = self.repair_plan()
        n = self.n_frames
        for key in tail:
            arr = self.array(key)
            arr.resize((n, *arr.shape[1:]))
        return tail

    def set_attrs(self, **attrs: Any) -> None:
        self._require_writable()
        meta = _attrs_of(self.root, self.path)
        meta.update(attrs)
        self.root.attrs["robodiff"] = meta
        self.attrs = meta
        self.fps = meta.get("fps")
        self.task = meta.get("task")
        self.robot = meta.get("robot")
        committed = meta.get("episodes")
        self.recorded_episodes = committed if isinstance(committed, int) else None

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
