"""The main job in one call: expert demos -> image diffusion policy -> evaluation -> report.md.

Every stage writes under a `.partial` name and is renamed when complete, so an interrupted run
never leaves a store or a run dir that later looks finished; a rerun starts those stages again and
reuses the ones that completed with the same settings.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig

from robodiff.commands.collect import CollectConfig, collect_with
from robodiff.commands.eval import evaluate_with
from robodiff.commands.eval import load_config as eval_load_config
from robodiff.commands.train import train_with
from robodiff.config import bounded, compose, split_policy_override, validate
from robodiff.data.store import EpisodeStore
from robodiff.errors import ConfigError
from robodiff.policy.checkpoint import BEST, CHECKPOINTS
from robodiff.policy.schema import SCHEMAS as POLICY_SCHEMAS
from robodiff.paths import write_text_atomic
from robodiff import jsonio


def log(msg: str) -> None:
    print(f"[quickstart] {msg}", file=sys.stderr, flush=True)


def _stage_done(path: Path, settings: dict[str, Any]) -> bool:
    marker = path / "quickstart_stage.json"
    return marker.is_file() and json.loads(marker.read_text()) == settings


def _finish_stage(partial: Path, final: Path, settings: dict[str, Any]) -> None:
    (partial / "quickstart_stage.json").write_text(json.dumps(settings))
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)


def collect_demos(cfg: DictConfig, out: Path) -> tuple[Path, dict[str, Any]]:
    final = out / "demos"
    settings = {"task": cfg.task, "demos": cfg.demos, "seed": cfg.seed,
                "noise": [float(cfg.noise.scale), float(cfg.noise.correlation)]}
    if _stage_done(final, settings):
        log(f"reusing {cfg.demos} demonstrations in {final}")
        return final / "demos.zarr", {"reused": True}
    partial = out / "demos.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log(f"collecting {cfg.demos} expert demonstrations of {cfg.task}")
    summary = collect_with(validate(compose("collect", [
        f"task={cfg.task}", "teleop=expert", f"episodes={cfg.demos}", f"out={partial / 'demos.zarr'}",
        f"seed={cfg.seed}", f"noise.scale={cfg.noise.scale}", f"noise.correlation={cfg.noise.correlation}",
        f"keep_failed={str(bool(cfg.noise.keep_failed)).lower()}"]), CollectConfig))
    if summary.get("interrupted"):
        # collect keeps the episodes it committed; for the quickstart an incomplete set is no result.
        raise KeyboardInterrupt
    _finish_stage(partial, final, settings)
    return final / "demos.zarr", summary


def policy_overrides(cfg: DictConfig) -> list[str]:
    dims = ",".join(str(int(d)) for d in cfg.down_dims)
    return [f"policy.encoder.backbone={cfg.encoder}", f"policy.denoiser.down_dims=[{dims}]",
            f"policy.denoiser.diffusion_step_embed_dim={cfg.diffusion_step_embed_dim}",
            f"policy.n_obs_steps={cfg.n_obs_steps}", f"policy.n_action_steps={cfg.n_action_steps}",
            f"training.lr={cfg.lr}", f"training.lr_warmup_steps={cfg.lr_warmup_steps}"]


def train_overrides(cfg: DictConfig, store: Path) -> list[str]:
    """The `robodiff train` overrides of the quickstart: used for the run and in report.md."""
    select = cfg.select
    return [f"task={cfg.task}", f"dataset={store}", f"policy={cfg.policy}",
            f"training.steps={cfg.train_steps}", f"training.batch_size={cfg.batch_size}",
            f"training.seed={cfg.seed}", f"device={cfg.device}", *policy_overrides(cfg),
            f"eval.every_steps={select.every_steps}", f"eval.episodes={select.episodes}",
            f"eval.seed={select.seed}", f"eval.n_envs={select.n_envs}"]


def train_policy(cfg: DictConfig, out: Path, store: Path) -> dict[str, Any]:
    final = out / "run"
    overrides = train_overrides(cfg, store)
    with EpisodeStore.open(store) as demos:  # other demonstrations at the same path need a new policy
        settings = {"overrides": overrides, "demos": [demos.id, demos.n_frames]}
    if _stage_done(final, settings):
        log(f"reusing the trained policy in {final}")
        summary = json.loads((final / "quickstart_train.json").read_text())
        return {**summary, "run_dir": str(final), "reused": True}
    partial = out / "run.partial"
    shutil.rmtree(partial, ignore_errors=True)
    train_cfg = compose("train", [*overrides, f"run_dir={partial}"])
    log("training: " + " ".join(overrides[1:]))
    summary = train_with(train_cfg)
    if summary.get("interrupted"):
        # train saved where it stopped; for the quickstart an unfinished run is no result.
        raise KeyboardInterrupt
    (partial / "quickstart_train.json").write_text(jsonio.dumps(summary))
    _finish_stage(partial, final, settings)
    return {**summary, "run_dir": str(final)}


def evaluate_policy(cfg: DictConfig, out: Path, run_dir: Path) -> dict[str, Any]:
    eval_dir = out / "eval"
    shutil.rmtree(eval_dir, ignore_errors=True)
    log(f"evaluating over {cfg.eval.episodes} seeded episodes")
    return evaluate_with(eval_load_config([
        f"task={cfg.task}", f"checkpoint={run_dir}", f"episodes={cfg.eval.episodes}",
        f"seed={cfg.eval.seed}", f"n_envs={cfg.eval.n_envs}", f"out={eval_dir}",
        f"n_videos={cfg.eval.n_videos}", f"device={cfg.device}"]))


def write_report(out: Path, cfg: DictConfig, result: dict[str, Any], run_dir: Path,
                 evaluation: dict[str, Any]) -> Path:
    lo, hi = evaluation.get("ci95", [None, None])

    def rel(path: str | Path) -> str:
        return Path(path).resolve().relative_to(out.resolve()).as_posix()

    lines = [
        f"# robodiff quickstart: {cfg.task}",
        "",
        f"- success rate: **{evaluation['success_rate']:.2f}** over {evaluation['episodes']} episodes"
        + (f" (95 % interval {lo:.2f}-{hi:.2f})" if lo is not None else ""),
        f"- mean score: {evaluation['mean_score']:.3f}",
        f"- demonstrations: {result['demos']} ({result['demo_frames']} frames)",
        f"- training: {result['train_steps']} steps in {result['train_seconds']:.0f} s",
        f"- total time: {result['total_seconds']:.0f} s",
        "",
        "## Training: loss, and success of the rollouts during training",
        "",
        f"![loss]({rel(run_dir / 'loss.png')})",
        "",
        (f"The checkpoint evaluated is step {result['best_step']}, whose rollouts during training (seeds "
         f"{cfg.select.seed}+, apart from the evaluation's) succeeded most." if result.get("best_step")
         else "The checkpoint evaluated is the last one."),
        "",
        "## Success by episode",
        "",
        f"![eval]({rel(Path(evaluation['out']) / 'eval.png')})",
        "",
        "## Rollout videos",
        "",
        *[f"- [{Path(v).name}]({rel(v)})" for v in evaluation.get("videos", [])],
        "",
        "## Reproduce step by step",
        "",
        "```",
        f"robodiff collect task={cfg.task} teleop=expert episodes={cfg.demos} seed={cfg.seed} "
        f"noise.scale={cfg.noise.scale} noise.correlation={cfg.noise.correlation} "
        f"keep_failed={str(bool(cfg.noise.keep_failed)).lower()} out={out / 'demos' / 'demos.zarr'}",
        "robodiff train " + " ".join(train_overrides(cfg, out / "demos" / "demos.zarr")),
        f"robodiff eval task={cfg.task} checkpoint={result['checkpoint']} episodes={cfg.eval.episodes} "
        f"seed={cfg.eval.seed} device={cfg.device}",
        "```",
        "",
    ]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines))
    return report


def run_quickstart(cfg: DictConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    store, _ = collect_demos(cfg, out)

    with EpisodeStore.open(store) as s:
        demos, demo_frames = s.n_episodes, s.n_frames
    t_train = time.monotonic()
    training = train_policy(cfg, out, store)
    train_seconds = float(training.get("train_seconds", time.monotonic() - t_train))
    run_dir = Path(training["run_dir"])
    # The checkpoint whose rollouts during training succeeded most (on seeds apart from these).
    best = run_dir / CHECKPOINTS / BEST
    checkpoint = best if best.is_dir() else run_dir
    evaluation = evaluate_policy(cfg, out, checkpoint)
    result = {
        "success_rate": evaluation["success_rate"],
        "mean_score": evaluation["mean_score"],
        "ci95": evaluation.get("ci95"),
        "demos": demos,
        "demo_frames": demo_frames,
        "train_steps": training.get("steps"),
        "train_seconds": train_seconds,
        "eval_episodes": evaluation["episodes"],
        "total_seconds": time.monotonic() - t0,
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "best_step": training.get("best_step"),
        "out": str(out),
    }
    result["report"] = str(write_report(out, cfg, result, run_dir, evaluation))
    write_text_atomic(out / "summary.json", jsonio.dumps(result, indent=2))
    return result


@dataclass
class EvalSettings:
    episodes: int = bounded(50, ge=1)
    seed: int = bounded(100000, ge=0)
    n_envs: int = bounded(2, ge=1)
    n_videos: int = bounded(4, ge=0)


@dataclass
class NoiseSettings:
    scale: float = bounded(ge=0, le=1)
    correlation: float = bounded(ge=0, lt=1)
    keep_failed: bool = MISSING


@dataclass
class SelectSettings:
    every_steps: int = bounded(ge=0)
    episodes: int = bounded(ge=1)
    seed: int = bounded(ge=0)
    n_envs: int = bounded(ge=1)


@dataclass
class QuickstartConfig:
    """Typed schema of conf/quickstart.yaml (the YAML holds the defaults and their reasons)."""

    out: str = "quickstart_out"
    seed: int = bounded(0, ge=0)
    task: str = "push_block"
    demos: int = bounded(150, ge=1)
    train_steps: int = bounded(3500, ge=1)
    batch_size: int = bounded(64, ge=1)
    lr: float = bounded(1.0e-3, gt=0)
    lr_warmup_steps: int = bounded(100, ge=0)
    policy: str = "diffusion_unet"
    encoder: str = "small_cnn"
    down_dims: list[int] = bounded(ge=1, factory=lambda: [32, 64, 128])
    diffusion_step_embed_dim: int = bounded(64, ge=4)
    n_obs_steps: int = bounded(1, ge=1)
    n_action_steps: int = bounded(4, ge=1)
    device: str = "cpu"
    noise: NoiseSettings = field(default_factory=NoiseSettings)
    select: SelectSettings = field(default_factory=SelectSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)


def quickstart_config(overrides: list[str]) -> DictConfig:
    """Composed and type-checked before any stage runs, so a bad value costs nothing."""
    rest, policy = split_policy_override(overrides)
    cfg = validate(compose("quickstart", rest), QuickstartConfig)
    if policy is not None:
        cfg.policy = policy
    if cfg.policy not in POLICY_SCHEMAS:
        raise ConfigError(f"policy={cfg.policy}: no such policy (one of {', '.join(sorted(POLICY_SCHEMAS))})")
    if not cfg.down_dims:
        raise ConfigError("config key 'down_dims' is empty: give one width per UNet level, e.g. [32,64,128]")
    if cfg.select.every_steps > 0:
        chosen = range(cfg.select.seed, cfg.select.seed + cfg.select.episodes)
        final = range(cfg.eval.seed, cfg.eval.seed + cfg.eval.episodes)
        if chosen.start < final.stop and final.start < chosen.stop:
            raise ConfigError(f"select.seed={cfg.select.seed} with {cfg.select.episodes} episodes overlaps the "
                              f"evaluation's seeds {final.start}..{final.stop - 1}: the checkpoint would be "
                              f"chosen on the episodes it is then scored on")
    return cfg
