"""`robodiff bench data`: training windows per second through a DataLoader.

Two stores are built in a temporary directory (images: 2 cameras 96x96 with noise, so that the
compression ratio is realistic; low-dim), and each is read through the same DataLoader twice:
with `WindowDataset`, and with the straightforward reader most codebases start from (index the
zarr arrays per window and per key over the whole horizon, pad in numpy, no caching).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset

from robodiff.config import bounded, compose, validate
from robodiff.data.dataset import WindowDataset
from robodiff.data.store import EpisodeStore
from robodiff.data.windows import WindowIndex
from robodiff.features import Feature
from robodiff.progress import progress_bar


@dataclass
class BenchDataConfig:
    episodes: int = bounded(50, ge=1)
    steps: int = bounded(100, ge=1)
    cameras: int = bounded(2, ge=1)
    image_size: int = bounded(96, ge=8)
    noise: float = bounded(2.0, ge=0)
    lowdim_episodes: int = bounded(200, ge=1)
    state_dim: int = bounded(20, ge=1)
    action_dim: int = bounded(10, ge=1)
    batch_size: int = bounded(64, ge=1)
    num_workers: int = bounded(2, ge=0)
    horizon: int = bounded(16, ge=1)
    n_obs_steps: int = bounded(2, ge=1)
    n_action_steps: int = bounded(8, ge=1)
    seconds: float = bounded(6.0, gt=0)
    seed: int = bounded(0, ge=0)
    dir: str | None = None


class PlainWindowReader(Dataset):
    """The baseline: every key read over the whole window straight from zarr, padded in numpy."""

    def __init__(self, path: Path, keys: list[str], index: WindowIndex):
        self.path, self.keys, self.index = path, keys, index
        self.arrays: dict[str, zarr.Array] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.arrays is None:
            root = zarr.open_group(str(self.path), mode="r")
            self.arrays = {k: root["data"][k] for k in self.keys}
        first, begin, end = (int(self.index.starts[i]), int(self.index.ep_start[i]), int(self.index.ep_end[i]))
        lo, hi = max(first, begin), min(first + self.index.horizon, end)
        out = {}
        for key, arr in self.arrays.items():
            window = arr[lo:hi]
            window = np.concatenate([np.repeat(window[:1], lo - first, axis=0), window,
                                     np.repeat(window[-1:], first + self.index.horizon - hi, axis=0)])
            out[key] = torch.from_numpy(window)
        return out


def _smooth_noisy_images(rng: np.random.Generator, n: int, size: int, noise: float) -> np.ndarray:
    # A moving gradient plus sensor-like noise: compresses like camera frames, unlike pure noise.
    # Chunks are compressed one frame each, so cycling a few noise fields costs no realism.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.stack([xx, yy, (xx + yy) / 2], axis=-1) * (255.0 / size)
    fields = rng.normal(0, noise, (8, size, size, 3)).astype(np.float32)
    speed = rng.uniform(0.5, 2.0)
    frames = np.empty((n, size, size, 3), np.uint8)
    for t in range(n):
        frames[t] = np.clip((base + t * speed) % 255 + fields[t % len(fields)], 0, 255)
    return frames


def build_stores(cfg: Any, root: Path) -> tuple[Path, list[str], Path]:
    rng = np.random.default_rng(cfg.seed)
    cams = [f"camera{c}" for c in range(cfg.cameras)]
    image_feats = {c: Feature("image", (cfg.image_size, cfg.image_size, 3), "uint8") for c in cams}
    image_feats["state"] = Feature("lowdim", (cfg.state_dim,), "float32")
    image_feats["action"] = Feature("action", (cfg.action_dim,), "float32")
    lowdim_feats = {k: image_feats[k] for k in ("state", "action")}
    image = EpisodeStore.create(root / "image.zarr", image_feats, fps=10)
    lowdim = EpisodeStore.create(root / "lowdim.zarr", lowdim_feats, fps=10)
    total = cfg.episodes + cfg.lowdim_episodes
    with progress_bar(total=total, desc="building stores", unit="episode") as bar:
        for store, n_eps in ((image, cfg.episodes), (lowdim, cfg.lowdim_episodes)):
            for _ in range(n_eps):
                ep = {"state": rng.normal(size=(cfg.steps, cfg.state_dim)).astype(np.float32),
                      "action": rng.normal(size=(cfg.steps, cfg.action_dim)).astype(np.float32)}
                if store is image:
                    ep.update({c: _smooth_noisy_images(rng, cfg.steps, cfg.image_size, cfg.noise) for c in cams})
                store.append_episode(ep)
                bar.update()
    return root / "image.zarr", cams, root / "lowdim.zarr"


def windows_per_second(dataset: Dataset, cfg: Any, label: str) -> float:
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                        persistent_workers=cfg.num_workers > 0, generator=torch.Generator().manual_seed(cfg.seed))
    windows, started = 0, None
    with progress_bar(desc=label, unit="window", leave=False) as bar:
        while started is None or time.perf_counter() - started < cfg.seconds:
            for batch in loader:
                n = len(next(iter(batch.values())))
                bar.update(n)
                if started is None:  # the first batch pays for worker start-up
                    started = time.perf_counter()
                    continue
                windows += n
                if time.perf_counter() - started >= cfg.seconds:
                    break
    return windows / (time.perf_counter() - started)


SCHEMA = BenchDataConfig


def load_config(overrides: list[str]) -> Any:
    return validate(compose("bench_data", overrides), BenchDataConfig)


def run(overrides: list[str], flags: set[str]) -> dict[str, Any]:
    cfg = load_config(overrides)
    torch.manual_seed(cfg.seed)
    root = Path(cfg.dir) if cfg.dir else Path(tempfile.mkdtemp(prefix="robodiff_bench_data_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        image_path, cams, lowdim_path = build_stores(cfg, root)
        windows = dict(horizon=cfg.horizon, n_obs_steps=cfg.n_obs_steps, n_action_steps=cfg.n_action_steps)
        results: dict[str, Any] = {}
        for name, path, obs in (("image", image_path, [*cams, "state"]), ("lowdim", lowdim_path, ["state"])):
            ours = WindowDataset(path, obs, **windows)
            plain = PlainWindowReader(path, [*obs, "action"], ours.index)
            results[f"{name}_windows_per_s"] = windows_per_second(ours, cfg, f"{name}: WindowDataset")
            results[f"{name}_baseline_windows_per_s"] = windows_per_second(plain, cfg, f"{name}: plain zarr")
            results[f"{name}_speedup"] = results[f"{name}_windows_per_s"] / results[f"{name}_baseline_windows_per_s"]
            results[f"{name}_windows"] = len(ours)
        with EpisodeStore.open(image_path) as store:
            raw = store.n_frames * cfg.cameras * cfg.image_size**2 * 3
            stored = sum(f.stat().st_size for c in cams for f in (image_path / "data" / c).iterdir())
        results["image_compression_ratio"] = raw / stored
    finally:
        if not cfg.dir:
            shutil.rmtree(root, ignore_errors=True)
    results.update(batch_size=cfg.batch_size, num_workers=cfg.num_workers, horizon=cfg.horizon,
                   n_obs_steps=cfg.n_obs_steps, n_action_steps=cfg.n_action_steps,
                   torch_threads=torch.get_num_threads())
    print(f"{'dataset':<8} {'WindowDataset':>14} {'plain zarr':>12} {'speedup':>8}   (windows/s, batch "
          f"{cfg.batch_size}, {cfg.num_workers} workers)")
    for name in ("image", "lowdim"):
        print(f"{name:<8} {results[name + '_windows_per_s']:>14.0f} {results[name + '_baseline_windows_per_s']:>12.0f} "
              f"{results[name + '_speedup']:>7.1f}x")
    print(f"image compression ratio {results['image_compression_ratio']:.2f}")
    return results
