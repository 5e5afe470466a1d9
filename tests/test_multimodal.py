"""Acceptance: the expert goes around an obstacle left or right at random. Diffusion samples cover
both routes and almost never the middle; MSE regression, trained the same way, lands in the middle;
a student distilled from the diffusion policy (`robodiff distill`) covers both routes in one step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robodiff.commands import distill as distill_command
from robodiff.data.store import EpisodeStore
from robodiff.features import Feature
from robodiff.policy.checkpoint import load_policy
from robodiff.train.config import load
from robodiff.train.trainer import train

ROUTE_STEPS = 16
SWERVE = 0.5  # lateral distance of each route from the straight line through the obstacle
QUIET = ["logging.progress=false", "logging.tensorboard=false"]


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


def train_on_obstacle(root: Path, policy: str, steps: int) -> Path:
    """A policy trained on the obstacle store in `root` (made there once); its run dir."""
    store = root / "obstacle.zarr"
    if not store.exists():
        obstacle_store(store)
    cfg = load([f"policy={policy}", f"dataset={store}", f"run_dir={root / f'{policy}_{steps}'}",
                f"training.steps={steps}", "training.batch_size=64", "training.lr=3e-3", "training.lr_warmup_steps=20",
                "training.val_ratio=0", "policy.n_obs_steps=1", "policy.denoiser.down_dims=[64,128]",
                "policy.denoiser.diffusion_step_embed_dim=64", *QUIET])
    return Path(train(cfg)["run_dir"])


def distil_on_obstacle(teacher: Path, steps: int) -> Path:
    """A consistency student of `teacher` (`robodiff distill`, default grid and target), its run dir."""
    run = teacher.parent / f"student_{teacher.name}_{steps}"
    overrides = [f"checkpoint={teacher}", f"run_dir={run}", f"training.steps={steps}", "training.batch_size=64",
                 "training.lr=3e-3", "training.lr_warmup_steps=20", "training.val_ratio=0", *QUIET]
    return Path(distill_command.run([], overrides, set())["run_dir"])


def lateral(run: Path, sampling_steps: int | None = None) -> np.ndarray:
    """Sample 200 chunks from the start: x where the route passes the obstacle (chunk step 7 ->
    y = 0.5)."""
    trained = load_policy(run, sampling_steps=sampling_steps)
    start = {"state": torch.zeros(200, 1, 2)}
    actions = trained.predict_action(start, generator=torch.Generator().manual_seed(0))
    return actions[:, ROUTE_STEPS // 2 - 1, 0].numpy()


def _check(x_diffusion: np.ndarray, x_regression: np.ndarray | None, max_middle: float) -> None:
    middle = float((np.abs(x_diffusion) < 0.3 * SWERVE).mean())
    left, right = float((x_diffusion < -0.5 * SWERVE).mean()), float((x_diffusion > 0.5 * SWERVE).mean())
    assert left > 0.25 and right > 0.25, (left, right)
    assert middle < max_middle, middle
    if x_regression is not None:
        # The mean of the two routes is straight through the obstacle.
        assert np.abs(x_regression).max() < 0.3 * SWERVE, x_regression


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return train_on_obstacle(tmp_path_factory.mktemp("obstacle"), "diffusion_unet", 400)


def test_diffusion_covers_both_routes_regression_averages(teacher):
    _check(lateral(teacher), lateral(train_on_obstacle(teacher.parent, "regression", 60)), max_middle=0.12)


def test_a_distilled_student_covers_both_routes_in_one_step(teacher):
    """Distillation does not collapse the modes: one step already puts most samples on a route,
    both routes alike; two steps are as sharp as the teacher's ten."""
    student = distil_on_obstacle(teacher, 400)
    _check(lateral(student), None, max_middle=0.3)
    _check(lateral(student, sampling_steps=2), None, max_middle=0.12)


@pytest.mark.slow
def test_diffusion_covers_both_routes_longer_training(tmp_path):
    _check(lateral(train_on_obstacle(tmp_path, "diffusion_unet", 1500)),
           lateral(train_on_obstacle(tmp_path, "regression", 400)), max_middle=0.04)


@pytest.mark.slow
def test_a_student_distilled_longer_is_as_sharp_in_one_step_as_its_teacher(teacher):
    student = distil_on_obstacle(teacher, 1500)
    _check(lateral(student), None, max_middle=0.12)
