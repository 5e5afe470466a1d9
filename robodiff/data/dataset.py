"""Torch dataset of training windows read from an episode store.

Each item is `{obs_key: (n_obs_steps, *shape), action_key: (horizon, *shape)}`; images stay
uint8 HWC (the policy normalizes), everything else is float32. Low-dim keys are small and held in
RAM; images are read from disk one contiguous slice per window unless `cache="memory"`.
The store is opened lazily in each process, so DataLoader workers (fork or spawn) never share
a zarr handle.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from robodiff.data.store import EpisodeStore
from robodiff.data.windows import WindowIndex
from robodiff.errors import UserError

CACHES = ("none", "memory")


class WindowDataset(Dataset):
    def __init__(self, store_path: str | os.PathLike, obs_keys: Sequence[str], action_key: str = "action",
                 horizon: int = 16, n_obs_steps: int = 2, n_action_steps: int = 8,
                 episodes: Sequence[int] | None = None, cache: str = "none",
                 crop: tuple[int, int] | None = None, action_array: str | None = None):
        """`action_array`: the store array the action is read from (default `action_key`), e.g. a
        perturbed demonstration's `expert_action` label."""
        if cache not in CACHES:
            raise UserError(f"cache '{cache}' is not one of {', '.join(CACHES)}")
        self.store_path = Path(store_path)
        self.obs_keys = list(obs_keys)
        self.action_key = action_key
        # item key -> the store array holding it
        self.arrays = {**{k: k for k in self.obs_keys}, action_key: action_array or action_key}
        self.horizon = horizon
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.cache = cache
        self.crop = tuple(crop) if crop is not None else None
        with EpisodeStore.open(self.store_path) as store:
            for array in self.arrays.values():
                if array not in store.features:
                    raise UserError(f"{self.store_path}: no key '{array}' (store has {', '.join(store.keys)})")
            self.features = {k: store.features[a] for k, a in self.arrays.items()}
            self.fps = store.fps
            self.episode_ends = np.asarray(store.episode_ends)
            self.index = WindowIndex(self.episode_ends, horizon, n_obs_steps, n_action_steps, episodes)
            self.image_keys = [k for k in self.obs_keys if self.features[k].kind == "image"]
            self._check_crop()
            in_ram = [k for k in self.features if self.features[k].kind != "image" or cache == "memory"]
            n = store.n_frames
            self._ram: dict[str, np.ndarray] = {k: self._load(store, k, n) for k in in_ram}
        self._store: EpisodeStore | None = None
        self._pid = -1

    def subset(self, episodes: Sequence[int]) -> WindowDataset:
        """The windows of other episodes of the same store, sharing the arrays already in memory
        (a validation split costs no second read of the low-dim data, nor of cached images)."""
        other = copy.copy(self)
        other.index = WindowIndex(self.episode_ends, self.horizon, self.n_obs_steps, self.n_action_steps,
                                  episodes)
        other._store, other._pid = None, -1
        return other

    def _check_crop(self) -> None:
        if self.crop is None:
            return
        for key in self.image_keys:
            h, w = self.features[key].shape[:2]
            if self.crop[0] > h or self.crop[1] > w:
                raise UserError(f"crop {list(self.crop)} is larger than image '{key}' ({h}x{w})")

    def _load(self, store: EpisodeStore, key: str, n: int) -> np.ndarray:
        arr = store.read_slice(self.arrays[key], 0, n)
        return arr if self.features[key].kind == "image" else arr.astype(np.float32, copy=False)

    def _open(self) -> EpisodeStore:
        # A handle inherited through fork would share the parent's file/zip state; reopen per process.
        if self._store is None or self._pid != os.getpid():
            self._store = EpisodeStore.open(self.store_path)
            self._pid = os.getpid()
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    def __len__(self) -> int:
        return len(self.index)

    def _read(self, key: str, i: int, length: int) -> np.ndarray:
        lo, hi, take = self.index.span(i, length)
        if key in self._ram:
            return self._ram[key][take + lo]
        return self._open().read_slice(self.arrays[key], lo, hi)[take]

    def _random_crop(self, frames: np.ndarray) -> np.ndarray:
        assert self.crop is not None
        h, w = frames.shape[1:3]
        ch, cw = self.crop
        # torch's RNG is seeded per DataLoader worker, so workers draw different crops.
        top = int(torch.randint(0, h - ch + 1, ()).item())
        left = int(torch.randint(0, w - cw + 1, ()).item())
        return frames[:, top:top + ch, left:left + cw]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        item: dict[str, torch.Tensor] = {}
        for key in self.obs_keys:
            frames = self._read(key, i, self.n_obs_steps)
            if key in self.image_keys:
                if self.crop is not None:
                    frames = self._random_crop(frames)
                item[key] = torch.from_numpy(np.ascontiguousarray(frames))
            else:
                item[key] = torch.from_numpy(np.asarray(frames, dtype=np.float32))
        item[self.action_key] = torch.from_numpy(np.asarray(self._read(self.action_key, i, self.horizon),
                                                            dtype=np.float32))
        return item
