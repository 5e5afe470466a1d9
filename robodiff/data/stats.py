"""Per-key statistics of an episode store (min, max, mean, std), computed in one streaming pass
and cached next to the store; the policy's normalizer is built from them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from robodiff.data.store import EpisodeStore
from robodiff.paths import write_text_atomic


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


def _sound(stats: dict, shape: tuple[int, ...]) -> bool:
    """Cached stats the normalizer can use: every field the feature's shape, finite."""
    for field in ("min", "max", "mean", "std"):
        values = np.asarray(stats[field], dtype=np.float64)
        if values.shape != tuple(shape) or not np.isfinite(values).all():
            return False
    return True


def cached_stats(store: EpisodeStore, keys: list[str]) -> dict[str, dict]:
    """Stats cached next to the store; recomputed when the store grew or was recreated."""
    cache = Path(str(store.path) + ".stats.json")
    wanted = set(keys)
    fingerprint = _fingerprint(store)
    if cache.exists():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("fingerprint") == fingerprint and wanted <= set(cached["stats"]):
                found = {k: cached["stats"][k] for k in keys}
                if all(_sound(found[k], store.features[k].shape) for k in keys):
                    return found
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # a damaged or hand-edited cache: computed again below
    stats = compute_stats(store, keys)
    try:
        write_text_atomic(cache, json.dumps({"fingerprint": fingerprint, "stats": stats}))
    except OSError:
        pass  # a read-only dataset location still trains; the pass is just repeated next time
    return stats
