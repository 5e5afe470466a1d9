"""Whole-store checks behind `robodiff dataset validate`: structure first, then one streaming
pass over every committed chunk (decode errors, NaN/Inf in low-dim data)."""

from __future__ import annotations

import os
import sys

import numpy as np
from tqdm import tqdm

from robodiff.data.store import EpisodeStore
from robodiff.errors import StoreError

BLOCK_BYTES = 16 * 1024 * 1024


def ends_problems(ends: np.ndarray) -> list[str]:
    if len(ends) and ends[0] <= 0:
        return [f"meta/episode_ends[0] is {int(ends[0])}: the first episode is empty"]
    bad = np.nonzero(np.diff(ends) <= 0)[0]
    if len(bad):
        i = int(bad[0])
        return [f"meta/episode_ends is not increasing at index {i + 1} "
                f"({int(ends[i])} -> {int(ends[i + 1])}; {len(bad)} such places)"]
    return []


def _structure_problems(store: EpisodeStore, keys: list[str]) -> tuple[list[str], str | None]:
    """Problems that `--repair` must not touch, and the uncommitted-tail problem (if any)."""
    problems = []
    n = store.n_frames
    if "action" not in keys:
        problems.append(f"{store.path}: no data/action array (a policy needs the action)")
    if store.declared_features:
        for key in store.features:
            if key not in keys:
                problems.append(f"features list '{key}' but data/{key} is missing")
    tail = {}
    for key in keys:
        arr = store.array(key)
        if arr.shape[0] < n:
            problems.append(f"data/{key} has {arr.shape[0]} frames, fewer than the {n} that "
                            f"meta/episode_ends commits")
        elif arr.shape[0] > n:
            tail[key] = arr.shape[0] - n
        feat = store.features.get(key)
        if store.declared_features and feat is not None:
            if str(arr.dtype) != feat.dtype:
                problems.append(f"data/{key} has dtype {arr.dtype}, its feature says {feat.dtype}")
            if tuple(arr.shape[1:]) != feat.shape:
                problems.append(f"data/{key} has per-step shape {list(arr.shape[1:])}, "
                                f"its feature says {list(feat.shape)}")
    tail_problem = None
    if tail:
        parts = ", ".join(f"data/{k} +{v}" for k, v in sorted(tail.items()))
        tail_problem = (f"uncommitted tail beyond frame {n} ({parts}): a recording was interrupted; "
                        f"`--repair` truncates it")
    return problems, tail_problem


def _content_problems(store: EpisodeStore, keys: list[str]) -> list[str]:
    """Decode every committed chunk once; count non-finite values in numeric non-image arrays."""
    problems = []
    n = store.n_frames
    starts = np.concatenate([[0], store.episode_ends[:-1]])
    total = sum(min(store.array(k).shape[0], n) for k in keys)
    with tqdm(total=total, desc="validate", unit="frame", file=sys.stderr, leave=False,
              disable=total < 10_000) as bar:
        for key in keys:
            arr = store.array(key)
            stop = min(arr.shape[0], n)
            row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
            step = max(arr.chunks[0], BLOCK_BYTES // row_bytes // arr.chunks[0] * arr.chunks[0])
            check_finite = store.features.get(key) is None or store.features[key].kind != "image"
            check_finite = check_finite and np.issubdtype(arr.dtype, np.floating)
            bad_count, first_bad = 0, -1
            for lo in range(0, stop, step):
                hi = min(stop, lo + step)
                try:
                    block = store.read_slice(key, lo, hi)
                except StoreError as exc:
                    problems.append(str(exc))
                    break
                finally:
                    bar.update(hi - lo)
                if check_finite:
                    bad_rows = np.nonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))[0]
                    if len(bad_rows):
                        bad_count += int((~np.isfinite(block)).sum())
                        first_bad = lo + int(bad_rows[0]) if first_bad < 0 else first_bad
            if bad_count:
                episode = int(np.searchsorted(starts, first_bad, side="right") - 1)
                problems.append(f"data/{key} has {bad_count} NaN/Inf values "
                                f"(first at frame {first_bad}, episode {episode})")
    return problems


def validate_store(path: str | os.PathLike, repair: bool = False) -> dict:
    """`{"valid", "episodes", "problems"}`. With `repair`, an uncommitted tail is truncated when
    it is the only structural problem (anything else needs a human)."""
    store = EpisodeStore.open(path)  # writable only if there is something to repair
    try:
        keys = sorted(store._data_group().array_keys())
        problems = ends_problems(store.episode_ends)
        if problems:  # frame counts derived from broken ends would only add noise
            return {"valid": False, "episodes": store.n_episodes, "problems": problems}
        structural, tail = _structure_problems(store, keys)
        if tail and repair and not structural:
            store.close()
            store = EpisodeStore.open(path, mode="r+")
            dropped = store.repair()
            print(f"repaired {store.path}: dropped " + ", ".join(f"{v} frames of data/{k}" for k, v in
                                                              sorted(dropped.items())), file=sys.stderr)
            tail = None
        problems = structural + ([tail] if tail else []) + _content_problems(store, keys)
        return {"valid": not problems, "episodes": store.n_episodes, "problems": problems}
    finally:
        store.close()
