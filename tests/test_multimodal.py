"""Acceptance: the expert goes around an obstacle left or right at random. Diffusion samples cover
both routes and almost never the middle; MSE regression, trained the same way, lands in the middle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robodiff.data.store import EpisodeStore
from robodiff.features import Feature
from robodiff.policy.checkpoint import load_policy
from robodiff.train.config import load
from robodiff.train.trainer import train

ROUTE_STEPS = 16
SWERVE = 0.5  # lateral distance of each route from the straight line through the obstacle


def obstacle_store(path: Path, n_episodes: int = 64, hold: int = 6, seed: int = 0) -> Path:
    """Start near (0, 0), goal (0, 1), obstacle at (0, 0.5): x = side * 0.5 * sin(pi * y)."""
    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(path, {"state": Feature("lowdim", (2,)), "action": Feature("action", (2,))},
                                fps=10, task="obstacle")
    sides = rng.permutation(np.repeat([-1.0, 1.0], n_episodes // 2))
    for side in sides:
        y = np.arange(ROUTE_STEPS + 1) / ROUTE_STEPS
        route = np.stack([side * SWERVE * np.sin(np.pi * y), y], 1)
        route = np.concatenate([route, np.repeat(route[-1:], hold, 0)])
        route += rng.normal(scale=0.01, size=route.shape)
        store.append_episode({"state": route[:-1].astype(np.float32), "action": route[1:].astype(np.float32)})
    return path


def lateral_at_obstacle(tmp_path: Path, policy: str, steps: int) -> np.ndarray:
    """Train, reload the checkpoint, and sample 200 chunks from the start: x where the route
    passes the obstacle (chunk step 7 -> y = 0.5)."""
    store = tmp_path / "obstacle.zarr"
    if not store.exists():
        obstacle_store(store)
    cfg = load([f"policy={policy}", f"dataset={store}", f"run_dir={tmp_path / policy}", f"training.steps={steps}",
                "training.batch_size=64", "training.lr=3e-3", "training.lr_warmup_steps=20", "training.val_ratio=0",
                "policy.n_obs_steps=1", "policy.denoiser.down_dims=[64,128]",
                "policy.denoiser.diffusion_step_embed_dim=64", "logging.progress=false",
                "logging.tensorboard=false"])
    summary = train(cfg)
    trained = load_policy(summary["run_dir"])
    start = {"state": torch.zeros(200, 1, 2)}
    actions = trained.predict_action(start, generator=torch.Generator().manual_seed(0))
    return actions[:, ROUTE_STEPS // 2 - 1, 0].numpy()


def _check(x_diffusion: np.ndarray, x_regression: np.ndarray, max_middle: float) -> None:
    middle = float((np.abs(x_diffusion) < 0.3 * SWERVE).mean())
    left, right = float((x_diffusion < -0.5 * SWERVE).mean()), float((x_diffusion > 0.5 * SWERVE).mean())
    assert left > 0.25 and right > 0.25, (left, right)
    assert middle < max_middle, middle
    # The mean of the two routes is straight through the obstacle.
    assert np.abs(x_regression).max() < 0.3 * SWERVE, x_regression


def test_diffusion_covers_both_routes_regression_averages(tmp_path):
    _check(lateral_at_obstacle(tmp_path, "diffusion_unet", 400),
           lateral_at_obstacle(tmp_path, "regression", 60), max_middle=0.12)


@pytest.mark.slow
def test_diffusion_covers_both_routes_longer_training(tmp_path):
    _check(lateral_at_obstacle(tmp_path, "diffusion_unet", 1500),
           lateral_at_obstacle(tmp_path, "regression", 400), max_middle=0.04)
