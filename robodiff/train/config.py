"""Typed schema of `conf/train.yaml`: a wrong type or an unknown key names itself before training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robodiff.config import compose, validate
from robodiff.errors import ConfigError


@dataclass
class TrainingConfig:
    steps: int = 5000
    batch_size: Any = None  # int | None
    num_workers: Any = None  # int | None
    cache: str = "auto"
    cache_max_gb: float = 4.0
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    weight_decay: float = 1e-6
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 500
    grad_clip_norm: Any = 1.0  # float | None
    amp: Any = "auto"  # auto | true | false
    channels_last: Any = "auto"  # auto | true | false
    deterministic: bool = False
    seed: int = 42
    log_every: int = 50
    val_every: int = 500
    val_ratio: float = 0.1
    val_batches: int = 16
    checkpoint_every: int = 1000


@dataclass
class EvalConfig:
    every_steps: int = 0
    episodes: int = 10
    seed: int = 100000
    n_envs: int = 1


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    progress: bool = True


@dataclass
class DistributedConfig:
    find_unused_parameters: bool = False


@dataclass
class TrainConfig:
    task: Any = None
    dataset: Any = None
    run_dir: Any = None
    resume: bool = False
    device: str = "auto"
    policy: dict[str, Any] = field(default_factory=dict)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


def tri_state(value: Any, key: str) -> bool | None:
    """`auto` -> None (decide by device), true/on -> True, false/off -> False."""
    text = str(value).lower()
    if text == "auto":
        return None
    if text in ("true", "on", "1"):
        return True
    if text in ("false", "off", "0"):
        return False
    raise ConfigError(f"config key '{key}' is '{value}', not one of auto, true, false")


def check(cfg: DictConfig) -> DictConfig:
    """Schema types plus the value checks a schema cannot express."""
    cfg = validate(cfg, TrainConfig)
    t = cfg.training
    positive = {"training.steps": t.steps, "training.log_every": t.log_every, "training.val_every": t.val_every,
                "training.checkpoint_every": t.checkpoint_every, "training.val_batches": t.val_batches}
    if t.batch_size is not None:
        positive["training.batch_size"] = t.batch_size
    for key, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"config key '{key}' must be a positive integer, got {value!r}")
    if t.num_workers is not None and (not isinstance(t.num_workers, int) or t.num_workers < 0):
        raise ConfigError(f"config key 'training.num_workers' must be >= 0, got {t.num_workers!r}")
    if t.cache not in ("auto", "memory", "none"):
        raise ConfigError(f"config key 'training.cache' is '{t.cache}', not one of auto, memory, none")
    for key in ("amp", "channels_last"):
        tri_state(t[key], f"training.{key}")
    if len(t.betas) != 2:
        raise ConfigError(f"config key 'training.betas' needs two values, got {list(t.betas)}")
    if not 0.0 <= t.val_ratio < 1.0:
        raise ConfigError(f"config key 'training.val_ratio' must be in [0, 1), got {t.val_ratio}")
    if t.lr_warmup_steps < 0 or t.lr <= 0:
        raise ConfigError("config keys 'training.lr' must be > 0 and 'training.lr_warmup_steps' >= 0")
    if cfg.eval.every_steps < 0 or cfg.eval.episodes < 1:
        raise ConfigError("config keys 'eval.every_steps' must be >= 0 and 'eval.episodes' >= 1")
    return cfg


def load(overrides: list[str]) -> DictConfig:
    return check(compose("train", overrides))


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
