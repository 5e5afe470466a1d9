"""`robodiff bench train`: training samples/s of `robodiff.train.trainer.train` against a
straightforward loop over the same network, in the same run.

The straightforward loop is what a first implementation looks like: windows read from Zarr one by
one (no RAM cache), DataLoader with no workers, fp32, contiguous (NCHW) weights, unfused AdamW,
`loss.item()` every step. Both loops build the policy with the same config and take the same EMA
step, so the ratio measures the training machinery, not the model.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import MISSING
from torch.utils.data import DataLoader, Dataset

from robodiff.config import bounded, compose, to_dict, validate
from robodiff.data.stats import cached_stats
from robodiff.data.store import EpisodeStore
from robodiff.data.windows import WindowIndex
from robodiff.errors import ConfigError
from robodiff.features import Feature, Features
from robodiff.models.ema import EMAModel
from robodiff.policy.factory import build_policy
from robodiff.train.config import load
from robodiff.train.trainer import train

KINDS = ("image", "lowdim")


@dataclass
class BenchTrainCase:
    policy: str = MISSING
    batch_size_cpu: int = bounded(ge=1)
    batch_size_cuda: int = bounded(ge=1)
    episodes: int = bounded(ge=1)
    episode_length: int = bounded(ge=1)
    cameras: Optional[int] = bounded(None, ge=1)
    image_size: Optional[int] = bounded(None, ge=8)
    state_dim: Optional[int] = bounded(None, ge=1)


@dataclass
class BenchTrainConfig:
    """Typed schema of conf/bench_train.yaml (defaults and reasons there)."""

    device: str = MISSING
    steps: int = bounded(ge=1)
    workdir: Optional[str] = MISSING
    seed: int = bounded(ge=0)
    image: BenchTrainCase = field(default_factory=BenchTrainCase)
    lowdim: BenchTrainCase = field(default_factory=BenchTrainCase)


def make_store(path: Path, kind: str, cfg: Any, seed: int) -> Path:
    """Synthetic demonstrations with the shapes of the benchmarked policy."""
    rng = np.random.default_rng(seed)
    c = cfg[kind]
    features: Features = {"action": Feature("action", (2,))}
    if kind == "image":
        size = int(c.image_size)
        for i in range(int(c.cameras)):
            features[f"cam{i}"] = Feature("image", (size, size, 3), "uint8")
        features["agent_pos"] = Feature("lowdim", (2,))
    else:
        features["state"] = Feature("lowdim", (int(c.state_dim),))
    store = EpisodeStore.create(path, features, fps=10, task=f"bench_{kind}")
    n = int(c.episode_length)
    for _ in range(int(c.episodes)):
        episode = {}
        for key, f in features.items():
            if f.kind == "image":
                episode[key] = rng.integers(0, 256, (n, *f.shape), dtype=np.uint8)
            else:
                episode[key] = np.cumsum(rng.normal(size=(n, *f.shape)), 0).astype(np.float32)
        store.append_episode(episode)
    return path


class PerWindowZarr(Dataset):
    """Every window read straight from the Zarr arrays (no cache), as a first implementation does."""

    def __init__(self, store_path: Path, obs_keys: list[str], horizon: int, n_obs_steps: int, n_action_steps: int):
        self.store = EpisodeStore.open(store_path)
        self.obs_keys = obs_keys
        self.index = WindowIndex(self.store.episode_ends, horizon, n_obs_steps, n_action_steps)
        self.n_obs_steps, self.horizon = n_obs_steps, horizon

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {}
        for key in self.obs_keys:
            steps = self.index.steps(i, self.n_obs_steps)
            item[key] = torch.as_tensor(np.stack([self.store.array(key)[int(s)] for s in steps]))
        steps = self.index.steps(i, self.horizon)
        item["action"] = torch.as_tensor(np.stack([self.store.array("action")[int(s)] for s in steps]),
                                         dtype=torch.float32)
        return item


def straightforward(store_path: Path, policy_cfg: dict[str, Any], device: torch.device, batch_size: int,
                    steps: int) -> float:
    """Samples/s of the plain loop over `steps` timed steps (one warm-up step first)."""
    with EpisodeStore.open(store_path) as store:
        features = {k: f for k, f in store.features.items() if k != "timestamp"}
        stats = cached_stats(store, [k for k, f in features.items() if f.kind != "image"])
    torch.manual_seed(0)
    policy = build_policy(policy_cfg, features, stats).to(device).train()
    ema = EMAModel(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6,
                                  foreach=False)
    data = PerWindowZarr(store_path, policy.obs_keys, policy.horizon, policy.n_obs_steps, policy.n_action_steps)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0)
    it = iter(loader)
    started = 0.0
    for i in range(steps + 1):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        loss = policy.compute_loss({k: v.to(device) for k, v in batch.items()})
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        ema.step(policy)
        loss.item()
        if i == 0:
            started = time.perf_counter()
    return steps * batch_size / (time.perf_counter() - started)


def ours(store_path: Path, run_dir: Path, policy_name: str, device: torch.device, batch_size: int,
         steps: int) -> float:
    cfg = load([f"policy={policy_name}", f"dataset={store_path}", f"run_dir={run_dir}", f"device={device.type}",
                f"training.steps={steps + 1}", f"training.batch_size={batch_size}", "training.val_ratio=0",
                f"training.log_every={steps + 1}", "logging.progress=false", "logging.tensorboard=false"])
    return float(train(cfg)["samples_per_s"])


def devices(choice: str) -> list[torch.device]:
    if choice == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("bench train device=cuda but torch sees no CUDA device")
    if choice not in ("cpu", "cuda"):
        raise ConfigError(f"bench train device '{choice}' is not one of auto, cpu, cuda")
    return [torch.device(choice)]


SCHEMA = BenchTrainConfig


def load_config(overrides: list[str]) -> Any:
    return validate(compose("bench_train", overrides), BenchTrainConfig)


def run(overrides: list[str], flags: set[str]) -> dict[str, Any]:
    cfg = load_config(overrides)
    steps = int(cfg.steps)
    workdir = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="robodiff-bench-train-"))
    results: dict[str, Any] = {"steps": steps, "torch": torch.__version__, "threads": torch.get_num_threads(),
                               "rows": []}
    try:
        for kind in KINDS:
            store = make_store(workdir / f"{kind}.zarr", kind, cfg, int(cfg.seed))
            policy_name = str(cfg[kind].policy)
            policy_cfg = to_dict(compose("train", [f"policy={policy_name}"]))["policy"]
            for device in devices(str(cfg.device)):
                batch = int(cfg[kind][f"batch_size_{device.type}"])
                fast = ours(store, workdir / f"run_{kind}_{device.type}", policy_name, device, batch, steps)
                plain = straightforward(store, policy_cfg, device, batch, steps)
                row = {"policy": kind, "device": str(device), "batch_size": batch,
                       "ours_samples_per_s": round(fast, 1), "straightforward_samples_per_s": round(plain, 1),
                       "ratio": round(fast / plain, 2)}
                results["rows"].append(row)
                print(f"{kind:7s} {device.type:4s} batch {batch:4d}: ours {fast:9.1f} samples/s, "
                      f"straightforward {plain:9.1f} samples/s, ratio {fast / plain:5.2f}", file=sys.stderr)
    finally:
        if not cfg.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return results
