"""The one integrity check of an episode store, used by every reader and writer.

`check_store` finds, in this order: a broken commit record (`meta/episode_ends` unreadable, not
increasing, or lost), arrays whose metadata does not parse, arrays shorter than the committed
frames, dtypes and shapes that differ from the features, chunk files missing from the committed
range, and (on request, per key) chunks that do not decode and NaN/Inf in numeric data.

`dataset validate` runs it in full; `train`, `view`, `collect` (append) and `import` run the cheap
part on the arrays they use, plus the content pass on the data they read anyway, and refuse a
store with errors in one line (`require_valid`).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.core.sync import sync

from robodiff.data.store import EpisodeStore, ends_problems, writer_pid
from robodiff.features import Features, features_to_dict
from robodiff.errors import StoreError
from robodiff.progress import progress_bar

BLOCK_BYTES = 16 * 1024 * 1024
ERROR, WARNING, TAIL = "error", "warning", "tail"


@dataclass(frozen=True)
class Problem:
    """One line naming the array, the episode and what is wrong. `kind`: an error (the data is
    wrong or missing), a warning (a foreign store's missing chunk, read as the fill value), or an
    uncommitted tail (readers ignore it; `repair()` truncates it)."""

    message: str
    kind: str = ERROR


def _stored_keys(arr: zarr.Array) -> set[str]:
    store, prefix = arr.store_path.store, arr.store_path.path

    async def keys() -> set[str]:
        return {key[len(prefix) + 1:] async for key in store.list_prefix(prefix + "/")}

    return sync(keys())


def _missing_chunks(store: EpisodeStore, key: str, arr: zarr.Array, stop: int) -> Problem | None:
    """The chunk files of frames [0, stop) that are not in the store (one problem per array)."""
    if stop <= 0:
        return None
    grid = getattr(arr, "shards", None) or arr.chunks
    present = _stored_keys(arr)
    counts = [math.ceil(stop / grid[0])] + [math.ceil(s / c) for s, c in zip(arr.shape[1:], grid[1:])]
    missing = []
    for flat in range(int(np.prod(counts))):
        coords = np.unravel_index(flat, counts)
        name = arr.metadata.encode_chunk_key(tuple(int(c) for c in coords))
        if name not in present:
            missing.append((name, int(coords[0]) * grid[0]))
    if not missing:
        return None
    name, row = missing[0]
    rows = (row, min(stop, row + grid[0]))
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    what = (f"data/{key}: chunk file {name} is missing (frames {rows[0]}-{rows[1] - 1}, "
            f"{store.episodes_text(*rows)}){more}")
    if store.complete_chunks:
        return Problem(what)
    return Problem(f"{what}; this store does not say that it wrote every chunk, so the frames read as "
                   f"the fill value", WARNING)


def _structure(store: EpisodeStore, keys: list[str] | None,
               images_uint8: bool) -> tuple[list[Problem], dict[str, zarr.Array]]:
    """Everything but the content; the arrays that opened, keyed by name."""
    problems: list[Problem] = []
    try:
        ends = store.episode_ends
    except StoreError as exc:
        return [Problem(str(exc))], {}
    broken = ends_problems(ends)
    if broken:  # frame counts derived from broken ends would only add noise
        return [Problem(f"{store.path}: {broken[0]}")], {}
    n = store.n_frames
    names = store.array_names()
    if keys is None:
        keys = sorted(set(names) | set(store.features))
        if "action" not in names:
            problems.append(Problem(f"{store.path}: no data/action array (a policy needs the action)"))
    if store.recorded_episodes is not None and store.recorded_episodes > len(ends):
        problems.append(Problem(f"{store.path}: meta/episode_ends holds {len(ends)} episodes but "
                                f"{store.recorded_episodes} were committed (the commit record was damaged)"))
    arrays: dict[str, zarr.Array] = {}
    tail: dict[str, int] = {}
    for key in keys:
        if key not in names:
            who = "its features list" if key in store.features else "it is needed, but"
            problems.append(Problem(f"{store.path}: data/{key} is missing ({who} '{key}')"))
            continue
        try:
            arr = store.array(key)
        except StoreError as exc:
            problems.append(Problem(str(exc)))
            continue
        arrays[key] = arr
        length = int(arr.shape[0]) if arr.shape else 0
        if not arr.shape:
            problems.append(Problem(f"{store.path}: data/{key} is a scalar, expected frames on axis 0"))
            continue
        if length < n:
            problems.append(Problem(f"data/{key} has {length} frames, fewer than the {n} that "
                                    f"meta/episode_ends commits ({store.episodes_text(length, n)} lack them)"))
        elif length > n:
            tail[key] = length - n
        feat = store.features.get(key)
        if feat is None:
            continue
        if feat.kind == "image" and arr.dtype != np.uint8:
            if images_uint8:
                problems.append(Problem(f"data/{key} is an image of dtype {arr.dtype}, expected uint8 "
                                        f"(`robodiff dataset import` converts 0..255 images)"))
        elif store.declared_features and str(arr.dtype) != feat.dtype:
            problems.append(Problem(f"data/{key} has dtype {arr.dtype}, its feature says {feat.dtype}"))
        if tuple(arr.shape[1:]) != feat.shape:
            problems.append(Problem(f"data/{key} has per-step shape {list(arr.shape[1:])}, "
                                    f"its feature says {list(feat.shape)}"))
    if store.recorded_episodes is None and not len(ends) and any(a.shape[0] for a in arrays.values()):
        problems.append(Problem(f"{store.path}: meta/episode_ends is empty but the arrays hold data "
                                f"(no committed episode)"))
    if tail:
        parts = ", ".join(f"data/{k} +{v}" for k, v in sorted(tail.items()))
        writer = writer_pid(store.path)
        why = (f"an episode being recorded now (pid {writer} is writing to the store)" if writer is not None else
               f"a recording was interrupted; `robodiff dataset validate {store.path} --repair` truncates it")
        problems.append(Problem(f"uncommitted tail beyond frame {n} ({parts}): {why}", TAIL))
    for key, arr in arrays.items():
        problem = _missing_chunks(store, key, arr, min(int(arr.shape[0]), n))
        if problem is not None:
            problems.append(problem)
    return problems, arrays


def _content(store: EpisodeStore, arrays: dict[str, zarr.Array], keys: list[str],
             skip: set[str]) -> list[Problem]:
    """Decode every committed chunk of `keys` once; count NaN/Inf in numeric non-image data."""
    problems = []
    n = store.n_frames
    todo = [k for k in keys if k in arrays and k not in skip]
    total = sum(min(arrays[k].shape[0], n) for k in todo)
    with progress_bar(total=total, desc="check", unit="frame", leave=False, disable=total < 10_000) as bar:
        for key in todo:
            arr = arrays[key]
            stop = min(arr.shape[0], n)
            row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
            step = max(arr.chunks[0], BLOCK_BYTES // row_bytes // arr.chunks[0] * arr.chunks[0])
            feat = store.features.get(key)
            check_finite = (feat is None or feat.kind != "image") and np.issubdtype(arr.dtype, np.floating)
            bad_count, first_bad = 0, -1
            for lo in range(0, stop, step):
                hi = min(stop, lo + step)
                try:
                    block = store.read_slice(key, lo, hi)
                except StoreError as exc:  # it names the chunk, its frames and episode
                    problems.append(Problem(str(exc)))
                    break
                finally:
                    bar.update(hi - lo)
                if check_finite:
                    bad_rows = np.nonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))[0]
                    if len(bad_rows):
                        bad_count += int((~np.isfinite(block)).sum())
                        first_bad = lo + int(bad_rows[0]) if first_bad < 0 else first_bad
            if bad_count:
                problems.append(Problem(f"data/{key} has {bad_count} NaN/Inf values "
                                        f"(first at frame {first_bad}, episode {store.episode_of(first_bad)})"))
    return problems


def check_store(store: EpisodeStore, keys: list[str] | None = None, content_keys: list[str] | None = None,
                images_uint8: bool = True) -> list[Problem]:
    """Problems with `keys` (None: every array and feature) and, for `content_keys`, with what
    their committed chunks hold. `images_uint8=False` accepts images of other dtypes (an
    importer converts them)."""
    problems, arrays = _structure(store, keys, images_uint8)
    if any(p.kind == ERROR for p in problems) and not arrays:
        return problems
    # An array with missing chunks was reported as such; a store that vouches for every chunk
    # cannot have its remaining content judged, a foreign one reads fill values (warned once).
    missing = {k for k in arrays if any(p.message.startswith(f"data/{k}: chunk file") for p in problems)}
    store.missing_reported.update(missing)
    skip = missing if store.complete_chunks else set()
    if content_keys:
        problems += _content(store, arrays, list(content_keys), skip)
    return problems


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.kind == ERROR]


def require_valid(store: EpisodeStore, keys: list[str], content_keys: list[str] | None = None,
                  images_uint8: bool = True) -> None:
    """Refuse a store with errors in the arrays a command uses (one line: the first error and how
    many more); print warnings. An uncommitted tail is ignored, as readers ignore it."""
    problems = check_store(store, keys, content_keys, images_uint8)
    for p in problems:
        if p.kind == WARNING:
            print(f"warning: {store.path}: {p.message}", file=sys.stderr)
    bad = errors(problems)
    if bad:
        more = f" (and {len(bad) - 1} more; see `robodiff dataset validate {store.path}`)" if len(bad) > 1 else ""
        first = bad[0].message
        where = "" if first.startswith(str(store.path)) else f"{store.path}: "
        raise StoreError(f"{where}{first}{more}")


def validate_store(path: str | os.PathLike, repair: bool = False) -> dict:
    """`{"valid", "episodes", "problems", "warnings"}` of the whole check. With `repair`, an
    uncommitted tail is truncated when the commit record can be trusted; nothing else is ever
    changed (a refusal, saying what it would have deleted, is then the first problem)."""
    refusal: list[Problem] = []
    if repair:
        with EpisodeStore.open(path) as store:
            try:
                tail = store.repair_plan()
            except StoreError as exc:
                refusal, tail = [Problem(str(exc))], {}
        if tail:
            with EpisodeStore.open(path, mode="r+") as store:
                dropped = store.repair()
            print(f"repaired {path}: dropped " + ", ".join(f"{v} frames of data/{k}"
                                                          for k, v in sorted(dropped.items())), file=sys.stderr)
    with EpisodeStore.open(path) as store:
        problems = check_store(store, content_keys=store.array_names())
        try:
            episodes = store.n_episodes
        except StoreError:
            episodes = 0
    if refusal:  # the tail stays: its hint to repair would contradict the refusal above it
        problems = refusal + [Problem(p.message.split(":", 1)[0] + ": not truncated (see above)", TAIL)
                              if p.kind == TAIL else p for p in problems]
    return {"valid": not any(p.kind in (ERROR, TAIL) for p in problems), "episodes": episodes,
            "problems": [p.message for p in problems if p.kind != WARNING],
            "warnings": [p.message for p in problems if p.kind == WARNING]}


def _comparable(features: Features) -> dict[str, dict]:
    return {k: {f: v for f, v in d.items() if f != "names"} for k, d in features_to_dict(features).items()}


def open_for_append(path: str | os.PathLike, features: Features, fps: float | None, task: str | None,
                    robot: str | None, extra_attrs: dict | None = None, who: str = "this run") -> EpisodeStore:
    """A new store, or an existing one whose features are exactly `features` (a recording
    interrupted earlier leaves a tail, which is dropped; a store with any other damage is refused
    before anything is written to it: new frames would land beside broken ones)."""
    path = Path(path)
    if not path.exists():
        return EpisodeStore.create(path, features, fps=fps, task=task, robot=robot, extra_attrs=extra_attrs)
    store = EpisodeStore.open(path, mode="r+")
    try:
        for key, value in (extra_attrs or {}).items():
            if store.attrs.get(key) != value:
                raise StoreError(f"{path}: attribute '{key}' is {store.attrs.get(key)!r} in the store but "
                                 f"{value!r} here (record into a new store)")
        # Names label the dimensions for people; what must agree is what the numbers are.
        theirs, ours = _comparable(store.features), _comparable(features)
        for key in sorted(set(theirs) | set(ours)):
            if theirs.get(key) != ours.get(key):
                raise StoreError(f"{path}: feature '{key}' is {theirs.get(key)} in the store but {ours.get(key)} "
                                 f"in what {who} records (record into a new store)")
        # Low-dim chunks are rewritten by an append, so they must decode; images are not touched.
        require_valid(store, store.keys, [k for k, f in store.features.items() if f.kind != "image"])
        dropped = store.repair()
        if dropped:
            print(f"{path}: dropped an uncommitted tail from an interrupted recording {dropped}", file=sys.stderr)
    except BaseException:
        store.close()
        raise
    return store
