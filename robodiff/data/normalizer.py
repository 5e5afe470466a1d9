"""Per-key affine normalization, computed in one streaming pass and saved inside checkpoints.

Low-dim and action keys map min/max to [-1, 1] (or mean/std to zero mean, unit variance); images
are uint8 and scale to [0, 1]. The parameters are torch buffers so they travel in the policy's
state dict: callers never normalize by hand.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robodiff.data.store import EpisodeStore
from robodiff.errors import UserError
from robodiff.features import Features

MODES = ("minmax", "meanstd")
EPS = 1e-4


class RunningStats:
    """Streaming min/max/mean/var over rows (Chan et al. parallel update)."""

    def __init__(self, dim_shape: tuple[int, ...]):
        self.n = 0
        self.min = np.full(dim_shape, np.inf)
        self.max = np.full(dim_shape, -np.inf)
        self.mean = np.zeros(dim_shape)
        self.m2 = np.zeros(dim_shape)

    def update(self, x: np.ndarray) -> None:
        x = x.astype(np.float64).reshape(-1, *self.min.shape)
        if len(x) == 0:
            return
        self.min = np.minimum(self.min, x.min(0))
        self.max = np.maximum(self.max, x.max(0))
        n_b, mean_b = len(x), x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        delta = mean_b - self.mean
        total = self.n + n_b
        self.mean = self.mean + delta * n_b / total
        self.m2 = self.m2 + m2_b + delta**2 * self.n * n_b / total
        self.n = total

    def as_dict(self) -> dict[str, list]:
        std = np.sqrt(self.m2 / max(self.n, 1))
        return {"min": self.min.tolist(), "max": self.max.tolist(), "mean": self.mean.tolist(),
                "std": std.tolist(), "count": self.n}


def compute_stats(store: EpisodeStore, keys: list[str], rows_per_read: int = 65536) -> dict[str, dict]:
    """One streaming pass over the committed frames of each low-dim key."""
    stats = {}
    n = store.n_frames
    for key in keys:
        rs = RunningStats(store.features[key].shape)
        for start in range(0, n, rows_per_read):
            rs.update(store.read_slice(key, start, min(n, start + rows_per_read)))
        stats[key] = rs.as_dict()
    return stats


def _fingerprint(store: EpisodeStore) -> str:
    """Changes when episodes are added or the store is recreated (its `id`, else its ends)."""
    ends = hashlib.sha1(store.episode_ends.tobytes()).hexdigest()[:16]
    return f"{store.id or 'foreign'}:{store.n_frames}:{ends}"


def cached_stats(store: EpisodeStore, keys: list[str]) -> dict[str, dict]:
    """Stats cached next to the store; recomputed when the store grew or was recreated."""
    cache = Path(str(store.path) + ".stats.json")
    wanted = set(keys)
    fingerprint = _fingerprint(store)
    if cache.exists():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("fingerprint") == fingerprint and wanted <= set(cached["stats"]):
                return {k: cached["stats"][k] for k in keys}
        except (ValueError, KeyError, TypeError):
            pass
    stats = compute_stats(store, keys)
    try:
        cache.write_text(json.dumps({"fingerprint": fingerprint, "stats": stats}))
    except OSError:
        pass  # a read-only dataset location still trains; the pass is just repeated next time
    return stats


class Normalizer(nn.Module):
    """x_norm = x * scale + offset per key; `image` keys are uint8 -> [0, 1]."""

    def __init__(self, features: Features, stats: dict[str, dict] | None = None, mode: str = "minmax"):
        super().__init__()
        if mode not in MODES:
            raise UserError(f"normalizer.mode '{mode}' is not one of {', '.join(MODES)}")
        self.mode = mode
        self.image_keys = [k for k, f in features.items() if f.kind == "image"]
        self.keys = [k for k, f in features.items() if f.kind in ("lowdim", "action")]
        for key in self.keys:
            shape = features[key].shape
            scale, offset = np.ones(shape), np.zeros(shape)
            if stats is not None:
                if key not in stats:
                    raise UserError(f"normalizer stats have no entry for '{key}'")
                scale, offset = self._affine(stats[key])
            self.register_buffer(f"scale_{key}", torch.as_tensor(scale, dtype=torch.float32))
            self.register_buffer(f"offset_{key}", torch.as_tensor(offset, dtype=torch.float32))

    def _affine(self, s: dict) -> tuple[np.ndarray, np.ndarray]:
        if self.mode == "minmax":
            lo, hi = np.asarray(s["min"]), np.asarray(s["max"])
            span = hi - lo
            # A constant dimension maps to 0 instead of dividing by zero.
            const = span < EPS
            scale = np.where(const, 1.0, 2.0 / np.where(const, 1.0, span))
            offset = np.where(const, -lo, -1.0 - lo * scale)
            return scale, offset
        mean, std = np.asarray(s["mean"]), np.asarray(s["std"])
        scale = 1.0 / np.maximum(std, EPS)
        return scale, -mean * scale

    def _params(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"scale_{key}"), getattr(self, f"offset_{key}")

    def normalize(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, x in batch.items():
            if key in self.image_keys:
                out[key] = x.float() / 255.0 if x.dtype == torch.uint8 else x
            elif key in self.keys:
                scale, offset = self._params(key)
                out[key] = x.float() * scale + offset
            else:
                out[key] = x
        return out

    def normalize_key(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self._params(key)
        return x.float() * scale + offset

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self._params(key)
        return (x - offset) / scale
